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


def token_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, 40, size=(2, 7)).astype("int32"),
        "padding_mask": np.array([[1] * 7, [1] * 5 + [0] * 2], "int32"),
    }


@pytest.mark.parametrize(
    ("make", "block_class"),
    [
        (qwen3_backbone, "Qwen3SparseMoeBlock"),
        (mixtral_backbone, "MixtralSparseMoeBlock"),
    ],
)
def test_a_backbone_gives_the_same_outputs_on_the_same_variables(make, block_class):
    backbone = make()
    x = token_inputs()
    expected = to_numpy(backbone(x))
    variables = [id(v) for v in backbone.weights]
    converted = sparsify(backbone)
    assert len(converted) == 2
    assert all(entry.endswith(f"({block_class})") for entry in converted)
    assert sorted(entry.split("/")[0] for entry in converted) == [
        "transformer_layer_0",
        "transformer_layer_1",
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


def test_gradients_are_those_of_the_dense_block():
    block = qwen3_block()
    x = np.random.default_rng(2).normal(size=(2, 6, 16)).astype("float32")
    block.build(x.shape)
    cotangent = np.random.default_rng(3).normal(size=(2, 6, 16)).astype("float32")

    def gradients():
        backend = keras.backend.backend()
        variables = block.trainable_variables
        if backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(block(x)[0] * cotangent)
            return [
                to_numpy(tf.convert_to_tensor(g))
                for g in tape.gradient(loss, variables)
            ]
        if backend == "torch":
            for variable in variables:
                variable.value.grad = None
            (block(x)[0] * keras.ops.convert_to_tensor(cotangent)).sum().backward()
            return [to_numpy(v.value.grad) for v in variables]
        import jax

        values = [v.value for v in variables]

        def loss(values):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)
            return (block(x)[0] * cotangent).sum()

        grads = jax.grad(lambda vals: _stateless(block, variables, vals, x, cotangent))(
            values
        )
        return [np.asarray(g) for g in grads]

    expected = gradients()
    sparsify(block)
    got = gradients()
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert all(np.abs(g).max() > 0 for g in got)


def _stateless(block, variables, values, x, cotangent):
    mapping = list(zip(variables, values, strict=True))
    with keras.StatelessScope(state_mapping=mapping):
        return (block(x)[0] * cotangent).sum()


def qwen3_causal_lm():
    return keras_hub.models.Qwen3MoeCausalLM(backbone=qwen3_backbone())


def test_greedy_generation_gives_the_same_tokens():
    causal_lm = qwen3_causal_lm()
    prompt = {
        "token_ids": np.array([[5, 9, 3, 0, 0, 0, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0]], "bool"),
    }
    causal_lm.compile(sampler="greedy")
    expected = causal_lm.generate(prompt, stop_token_ids=None)
    assert len(sparsify(causal_lm)) == 2
    got = causal_lm.generate(prompt, stop_token_ids=None)
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


def test_a_converted_model_saves_and_loads_in_a_fresh_process(tmp_path):
    backbone = mixtral_backbone()
    sparsify(backbone)
    x = token_inputs(seed=4)
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
