"""`keras_tether.moe.sparsify` on keras-hub's MoE models (random small configs)."""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is not installed")

from keras_tether.moe import sparsify  # noqa: E402

to_numpy = keras.ops.convert_to_numpy
SOURCE = str(Path(__file__).resolve().parents[1] / "src")


def qwen3_backbone():
    return keras_hub.models.Qwen3MoeBackbone(
        vocabulary_size=40,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        moe_intermediate_dim=8,
        num_experts=6,
        top_k=2,
        head_dim=8,
        norm_top_k_prob=True,
    )


def mixtral_backbone():
    return keras_hub.models.MixtralBackbone(
        vocabulary_size=40,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=8,
        num_experts=4,
        top_k=2,
    )


def randomize(model, seed):
    """Random values in every variable: expert biases and scales included
    (keras-hub starts them at zero and one, where leaving one out would
    change nothing), and Gemma 4's expert kernels (which start at zero)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(0.5 * rng.normal(size=variable.shape).astype("float32"))
    return model


def gpt_oss_backbone():
    return randomize(
        keras_hub.models.GptOssBackbone(
            vocabulary_size=40,
            num_layers=2,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=16,
            intermediate_dim=8,
            num_experts=5,
            top_k=2,
            head_dim=8,
        ),
        seed=10,
    )


def gemma4_backbone():
    # Every decoder block runs Gemma 4's dense MLP beside its expert bank.
    return randomize(
        keras_hub.models.Gemma4Backbone(
            vocabulary_size=40,
            image_size=16,
            num_layers=2,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=16,
            intermediate_dim=24,
            head_dim=8,
            sliding_window_size=4,
            sliding_window_pattern=2,
            enable_moe_block=True,
            num_experts=6,
            expert_intermediate_dim=8,
            num_experts_per_token=3,
        ),
        seed=11,
    )


def token_inputs(seed=0, backbone=None):
    rng = np.random.default_rng(seed)
    inputs = {
        "token_ids": rng.integers(1, 40, size=(2, 7)).astype("int32"),
        "padding_mask": np.array([[1] * 7, [1] * 5 + [0] * 2], "int32"),
    }
    if backbone is not None and "position_ids" in backbone.input:
        inputs["position_ids"] = np.tile(np.arange(7, dtype="int32"), (2, 1))
    return inputs


@pytest.mark.parametrize(
    ("make", "block_class", "parent"),
    [
        (qwen3_backbone, "Qwen3SparseMoeBlock", "transformer_layer"),
        (mixtral_backbone, "MixtralSparseMoeBlock", "transformer_layer"),
        (gpt_oss_backbone, "GptOssSparseMoeBlock", "transformer_layer"),
        (gemma4_backbone, "Gemma4MoEBlock", "decoder_block"),
    ],
)
def test_a_backbone_gives_the_same_outputs_on_the_same_variables(
    make, block_class, parent
):
    backbone = make()
    x = token_inputs(backbone=backbone)
    expected = to_numpy(backbone(x))
    variables = [id(v) for v in backbone.weights]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no block is left dense
        converted = sparsify(backbone)
    assert len(converted) == 2
    assert all(entry.endswith(f"({block_class})") for entry in converted)
    assert sorted(entry.split("/")[0] for entry in converted) == [
        f"{parent}_0",
        f"{parent}_1",
    ]
    assert [id(v) for v in backbone.weights] == variables
    np.testing.assert_allclose(to_numpy(backbone(x)), expected, atol=1e-5)
    assert sparsify(backbone) == []  # nothing is converted twice


class Holder(keras.layers.Layer):
    """A user's custom layer holding a block."""

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        self.block = block


def block_output(block, x, training):
    output, logits = block(x, training=training)
    return to_numpy(output), to_numpy(logits), [to_numpy(v) for v in block.losses]


def qwen_block():
    from keras_hub.src.models.qwen_moe.qwen_moe_decoder import QwenSparseMoeBlock

    return QwenSparseMoeBlock(
        hidden_dim=16,
        moe_intermediate_dim=8,
        shared_expert_intermediate_dim=12,
        num_experts=8,
        top_k=3,
        norm_top_k_prob=False,
    )


def qwen3_5_block():
    from keras_hub.src.models.qwen3_5_moe.qwen3_5_moe_decoder import (
        Qwen3_5MoeSparseMoeBlock,
    )

    return Qwen3_5MoeSparseMoeBlock(
        hidden_dim=16,
        moe_intermediate_dim=8,
        shared_expert_intermediate_size=12,
        num_experts=8,
        top_k=2,
    )


def qwen3_block():
    from keras_hub.src.models.qwen3_moe.qwen3_moe_decoder import Qwen3SparseMoeBlock

    return Qwen3SparseMoeBlock(
        hidden_dim=16,
        moe_intermediate_dim=8,
        num_experts=5,
        top_k=2,
        norm_top_k_prob=False,
    )


def mixtral_block():
    from keras_hub.src.models.mixtral.mixtral_decoder import MixtralSparseMoeBlock

    return MixtralSparseMoeBlock(hidden_dim=16, intermediate_dim=8, num_experts=4)


@pytest.mark.parametrize(
    "make", [qwen_block, qwen3_5_block, qwen3_block, mixtral_block]
)
def test_each_block_keeps_its_outputs_logits_and_losses(make):
    block = make()
    x = np.random.default_rng(1).normal(size=(3, 5, 16)).astype("float32")
    block.build(x.shape)
    expected = block_output(block, x, training=True)
    # Inside a user's own layer: the walk reaches it.
    (entry,) = sparsify(Holder(block))
    assert entry.endswith(f"({type(block).__name__})")
    got = block_output(block, x, training=True)
    for a, b in zip(got[:2], expected[:2], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(got[2], expected[2], rtol=1e-6)


def gpt_oss_block():
    from keras_hub.src.models.gpt_oss.gpt_oss_decoder import GptOssSparseMoeBlock

    block = GptOssSparseMoeBlock(
        hidden_dim=16, intermediate_dim=8, num_experts=6, top_k=3
    )
    block.build((2, 6, 16))
    # A clamp that random inputs reach, and a gate slope of its own.
    block.experts.limit = 1.5
    block.experts.alpha = 0.9
    return randomize(block, seed=12)


def test_a_gpt_oss_block_keeps_its_outputs_and_router_scores():
    block = gpt_oss_block()
    x = 2.0 * np.random.default_rng(5).normal(size=(3, 5, 16)).astype("float32")
    expected = [to_numpy(t) for t in block(x)]
    (entry,) = sparsify(Holder(block))
    assert entry.endswith("(GptOssSparseMoeBlock)")
    got = [to_numpy(t) for t in block(x)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_gemma4_expert_bank_outside_its_decoder_block_is_named_in_a_warning():
    # The bank receives dense routing weights; how many experts each token
    # takes is known only to the decoder block's router.
    from keras_hub.src.models.gemma4.gemma4_moe import Gemma4MoEBlock

    bank = Gemma4MoEBlock(num_experts=4, hidden_dim=16, expert_intermediate_dim=8)
    bank.build((None, 16))
    with pytest.warns(UserWarning, match=r"\(Gemma4MoEBlock\)"):
        assert sparsify(Holder(bank)) == []


def gradient_case(name):
    """A model, its forward pass on fixed inputs, and its MoE variables."""
    if name == "gemma4":
        model = gemma4_backbone()
        x = token_inputs(seed=6, backbone=model)
        moe = [v for v in model.trainable_variables if "moe" in v.path]
        return model, lambda: model(x), moe
    if name == "gpt_oss":
        model = gpt_oss_block()
    else:
        model = qwen3_block()
        model.build((2, 6, 16))
    x = 2.0 * np.random.default_rng(2).normal(size=(2, 6, 16)).astype("float32")
    return model, lambda: model(x)[0], model.trainable_variables


def gradients(variables, forward, cotangent):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(forward() * cotangent)
        return [
            to_numpy(tf.convert_to_tensor(g)) for g in tape.gradient(loss, variables)
        ]
    if backend == "torch":
        for variable in variables:
            variable.value.grad = None
        (forward() * keras.ops.convert_to_tensor(cotangent)).sum().backward()
        return [to_numpy(v.value.grad) for v in variables]
    import jax

    def loss(values):
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return (forward() * cotangent).sum()

    return [np.asarray(g) for g in jax.grad(loss)([v.value for v in variables])]


@pytest.mark.parametrize("name", ["qwen3", "gpt_oss", "gemma4"])
def test_gradients_are_those_of_the_dense_block(name):
    model, forward, moe_variables = gradient_case(name)
    shape = tuple(forward().shape)
    cotangent = np.random.default_rng(3).normal(size=shape).astype("float32")
    variables = model.trainable_variables
    expected = gradients(variables, forward, cotangent)
    sparsify(model)
    got = gradients(variables, forward, cotangent)
    for variable, a, b in zip(variables, got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=variable.path)
    moe_paths = {v.path for v in moe_variables}
    assert all(
        np.abs(g).max() > 0
        for variable, g in zip(variables, got, strict=True)
        if variable.path in moe_paths
    )


def qwen3_causal_lm():
    return keras_hub.models.Qwen3MoeCausalLM(backbone=qwen3_backbone())


def gpt_oss_causal_lm():
    return keras_hub.models.GptOssCausalLM(backbone=gpt_oss_backbone())


def gemma4_causal_lm():
    return keras_hub.models.Gemma4CausalLM(
        preprocessor=None, backbone=gemma4_backbone()
    )


@pytest.mark.parametrize("make", [qwen3_causal_lm, gpt_oss_causal_lm, gemma4_causal_lm])
def test_greedy_generation_gives_the_same_tokens(make, monkeypatch):
    causal_lm = make()
    prompt = {
        "token_ids": np.array([[5, 9, 3, 0, 0, 0, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0]], "bool"),
    }
    causal_lm.compile(sampler="greedy")
    expected = causal_lm.generate(prompt, stop_token_ids=None)
    assert len(sparsify(causal_lm)) == 2
    # The generation traced before the conversion is not reused: the sparse
    # calls run.
    from keras_tether.moe import _sparsify

    products = []
    tiled_product = _sparsify.tiled_product

    def counted(*args, **kwargs):
        products.append(1)
        return tiled_product(*args, **kwargs)

    monkeypatch.setattr(_sparsify, "tiled_product", counted)
    got = causal_lm.generate(prompt, stop_token_ids=None)
    assert products
    np.testing.assert_array_equal(got["token_ids"], expected["token_ids"])


LOAD = textwrap.dedent(
    """
    import sys
    import keras
    import keras_hub  # registers keras-hub's classes for loading
    import numpy as np
    from keras_tether.moe import sparsify

    model = keras.saving.load_model(sys.argv[1])
    x = dict(np.load(sys.argv[2]))
    dense = keras.ops.convert_to_numpy(model(x))
    print("converted", len(sparsify(model)))
    sparse = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(dense, np.load(sys.argv[3]), atol=1e-5)
    np.testing.assert_allclose(sparse, np.load(sys.argv[3]), atol=1e-5)
    print("ok")
    """
)


# Gemma 4's bank is found again through its decoder block after loading.
@pytest.mark.parametrize("make", [mixtral_backbone, gemma4_backbone])
def test_a_converted_model_saves_and_loads_in_a_fresh_process(tmp_path, make):
    backbone = make()
    sparsify(backbone)
    x = token_inputs(seed=4, backbone=backbone)
    np.savez(tmp_path / "x.npz", **x)
    np.save(tmp_path / "y.npy", to_numpy(backbone(x)))
    backbone.save(tmp_path / "model.keras")
    env = {**os.environ, "PYTHONPATH": SOURCE}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD,
            str(tmp_path / "model.keras"),
            str(tmp_path / "x.npz"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "converted 2" in result.stdout and "ok" in result.stdout


class RoutedMoeBlock(keras.layers.Layer):
    """A user's own MoE block: not something `sparsify` knows how to convert."""

    def call(self, x):
        return x


def test_blocks_it_cannot_convert_are_named_in_a_warning():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, RoutedMoeBlock(name="mine")(inputs))
    with pytest.warns(UserWarning, match=r"mine \(RoutedMoeBlock\)"):
        assert sparsify(model) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sparsify(keras.Sequential([keras.layers.Dense(2)])) == []


def test_a_block_not_built_yet_is_named_in_a_warning():
    block = mixtral_block()
    with pytest.warns(UserWarning, match=r"\(MixtralSparseMoeBlock\)"):
        assert sparsify(Holder(block)) == []
    block.build((2, 3, 16))
    assert len(sparsify(Holder(block))) == 1


def test_a_non_layer_is_refused():
    with pytest.raises(TypeError, match=r"`model`.*Keras model or layer.*str"):
        sparsify("qwen3")


def test_keras_tether_does_not_import_keras_hub():
    code = (
        "import sys, keras_tether, keras_tether.moe; print('keras_hub' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SOURCE},
    )
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr[-2000:]


def test_the_example_converts_a_model_and_keeps_its_outputs(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    import sparsify_keras_hub

    converted, difference, tokens = sparsify_keras_hub.main(num_experts=4, top_k=2)
    assert len(converted) == 2 and all("Qwen3SparseMoeBlock" in c for c in converted)
    assert difference < 1e-5
    assert tokens.shape == (1, 10)
