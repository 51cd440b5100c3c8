"""Tests of `GatedAverage` against NumPy formulas."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

import keras_tether
from keras_tether.layers import GatedAverage


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def np_softmax(z, temperature=1.0):
    z = np.asarray(z, "float64") / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_top_k_gates(logits, k):
    probabilities = np_softmax(logits)
    order = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
    kept = np.zeros_like(probabilities)
    np.put_along_axis(kept, order, np.take_along_axis(probabilities, order, -1), -1)
    return kept / kept.sum(-1, keepdims=True)


def data(seed=0, batch=6, d=4, features=3, n=3):
    rng = np.random.default_rng(seed)
    context = rng.normal(size=(batch, d)).astype("float32")
    branches = [rng.normal(size=(batch, features)).astype("float32") for _ in range(n)]
    kernel = rng.normal(size=(d, n)).astype("float32")
    return context, branches, kernel


def build(layer, context, branches, kernel):
    layer([context, branches])
    layer.router.kernel.assign(kernel)
    return layer


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_output_is_the_gated_sum(top_k):
    context, branches, kernel = data()
    layer = build(
        GatedAverage(top_k=top_k, return_gates=True), context, branches, kernel
    )
    output, gates = (to_numpy(t) for t in layer([context, branches]))
    logits = context.astype("float64") @ kernel
    expected_gates = (
        np_softmax(logits) if top_k is None else np_top_k_gates(logits, top_k)
    )
    np.testing.assert_allclose(gates, expected_gates, atol=1e-5)
    expected = sum(expected_gates[:, [i]] * branches[i] for i in range(3))
    np.testing.assert_allclose(output, expected, atol=1e-5)
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-6)
    if top_k is not None:
        assert ((gates > 0).sum(-1) == top_k).all()


def test_stacked_branches_along_any_axis_match_the_list():
    context, branches, kernel = data()
    listed = build(GatedAverage(), context, branches, kernel)
    expected = to_numpy(listed([context, branches]))
    for axis in (1, 2, -1):
        stacked = np.stack(branches, axis=axis)
        layer = build(GatedAverage(branch_axis=axis), context, stacked, kernel)
        np.testing.assert_allclose(
            to_numpy(layer([context, stacked])), expected, atol=1e-6
        )


def test_context_with_positions_gates_each_position():
    rng = np.random.default_rng(1)
    context = rng.normal(size=(2, 5, 4)).astype("float32")
    branches = [rng.normal(size=(2, 5, 3, 2)).astype("float32") for _ in range(4)]
    kernel = rng.normal(size=(4, 4)).astype("float32")
    layer = build(GatedAverage(top_k=2, return_gates=True), context, branches, kernel)
    output, gates = (to_numpy(t) for t in layer([context, branches]))
    expected_gates = np_top_k_gates(context.astype("float64") @ kernel, 2)
    np.testing.assert_allclose(gates, expected_gates, atol=1e-5)
    expected = sum(expected_gates[..., i, None, None] * branches[i] for i in range(4))
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_sparse_maps_give_exact_zeros():
    context, branches, kernel = data(n=4)
    layer = GatedAverage(simplex="sparsemax", return_gates=True)
    build(layer, context * 4, branches, kernel)
    _, gates = layer([context * 4, branches])
    gates = to_numpy(gates)
    assert (gates == 0).any() and ((gates > 0).sum(-1) >= 1).all()
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-5)


def test_gradients_match_numpy():
    # d(mse)/dW for y = sum_i softmax(cW)_i x_i, worked out by hand.
    context, branches, kernel = data(seed=2)
    target = np.zeros_like(branches[0])
    inputs = [keras.Input(shape=(4,))] + [keras.Input(shape=(3,)) for _ in range(3)]
    layer = GatedAverage()
    model = keras.Model(inputs, layer([inputs[0], inputs[1:]]))
    layer.router.kernel.assign(kernel)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.train_on_batch([context, *branches], target)
    gradient = kernel - to_numpy(layer.router.kernel)

    stacked = np.stack(branches, 1).astype("float64")  # (batch, N, features)
    gates = np_softmax(context.astype("float64") @ kernel)
    output = np.einsum("bn,bnf->bf", gates, stacked)
    d_output = 2 * (output - target) / output.size
    d_gates = np.einsum("bf,bnf->bn", d_output, stacked)
    d_logits = gates * (d_gates - (gates * d_gates).sum(-1, keepdims=True))
    np.testing.assert_allclose(gradient, context.T @ d_logits, rtol=1e-4, atol=1e-7)


def test_losses_only_in_training_and_masked():
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 9, size=(3, 5))
    tokens[:, 3:] = 0  # padding
    inputs = keras.Input(shape=(5,), dtype="int32")
    embedded = keras.layers.Embedding(9, 4, mask_zero=True)(inputs)
    branches = [keras.layers.Dense(2)(embedded) for _ in range(3)]
    layer = GatedAverage(top_k=1, load_balancing_coefficient=1.0, return_gates=True)
    _, gates = layer([embedded, branches])
    model = keras.Model(inputs, gates)
    probe = keras.Model(inputs, embedded)
    model(tokens, training=False)
    assert model.losses == []
    model(tokens, training=True)
    (loss,) = model.losses
    context = to_numpy(probe(tokens))[:, :3].reshape(-1, 4).astype("float64")
    probabilities = np_softmax(context @ to_numpy(layer.router.kernel))
    counts = np.bincount(probabilities.argmax(-1), minlength=3) / len(context)
    expected = 3 * float(np.dot(counts, probabilities.mean(0)))
    np.testing.assert_allclose(float(to_numpy(loss)), expected, rtol=1e-5)


def test_moving_mean_gates_follow_the_training_gates():
    context, branches, kernel = data()
    layer = build(
        GatedAverage(momentum=0.75, return_gates=True), context, branches, kernel
    )
    np.testing.assert_allclose(
        to_numpy(layer.moving_mean_gates), [1 / 3] * 3, atol=1e-7
    )
    _, gates = layer([context, branches], training=True)
    expected = 0.75 / 3 + 0.25 * to_numpy(gates).mean(0)
    np.testing.assert_allclose(to_numpy(layer.moving_mean_gates), expected, atol=1e-6)
    layer([context, branches], training=False)
    np.testing.assert_allclose(to_numpy(layer.moving_mean_gates), expected, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_mean_gates).sum(), 1.0, atol=1e-6)


def test_moving_mean_gates_move_in_fit():
    context, branches, _ = data(batch=16)
    inputs = [keras.Input(shape=(4,))] + [keras.Input(shape=(3,)) for _ in range(3)]
    layer = GatedAverage(momentum=0.5)
    model = keras.Model(inputs, layer([inputs[0], inputs[1:]]))
    model.compile(optimizer="sgd", loss="mse")
    model.fit([context, *branches], branches[0], batch_size=8, epochs=1, verbose=0)
    assert np.abs(to_numpy(layer.moving_mean_gates) - 1 / 3).max() > 1e-4
    np.testing.assert_allclose(to_numpy(layer.moving_mean_gates).sum(), 1.0, atol=1e-5)


def test_mixed_precision_routes_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    context, branches, _ = data()
    # Logits 1000.1 and 1000.3 round to 1000.0 and 1000.5 in float16.
    context = np.ones((6, 1), "float32")
    kernel = np.array([[1000.1, 1000.3, 0.0]], "float32")
    layer = build(GatedAverage(return_gates=True), context, branches, kernel)
    output, gates = layer([context, branches])
    assert layer.router.kernel.dtype == "float32"
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    expected = np_softmax(np.array([1000.1, 1000.3, 0.0], "float32"))
    np.testing.assert_allclose(
        to_numpy(gates).astype("float32")[0], expected, atol=1e-3
    )


def test_conformance_stacked():
    rng = np.random.default_rng(4)
    run_layer_test(
        GatedAverage,
        [
            rng.normal(size=(4, 5)).astype("float32"),
            rng.normal(size=(4, 3, 2)).astype("float32"),
        ],
        init_kwargs={
            "top_k": 2,
            "normalize_router_inputs": True,
            "z_loss_coefficient": 0.1,
            "branch_axis": 1,
        },
        list_input=True,
        expected_output_shape=(4, 2),
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=1,
    )


def test_conformance_list_of_branches():
    rng = np.random.default_rng(5)
    arrays = [rng.normal(size=(4, 3)).astype("float32") for _ in range(4)]

    def make_model():
        inputs = [keras.Input(shape=(3,)) for _ in range(4)]
        layer = GatedAverage(simplex="entmax15", load_balancing_coefficient=0.01)
        return keras.Model(inputs, layer([inputs[0], inputs[1:]])), layer

    run_layer_test(
        GatedAverage,
        arrays,
        make_model=make_model,
        expected_output_shape=(4, 3),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=1,
    )


def test_saving_with_gates_and_weights_files(tmp_path):
    context, branches, _ = data()
    inputs = [keras.Input(shape=(4,))] + [keras.Input(shape=(3,)) for _ in range(3)]
    layer = GatedAverage(top_k=2, temperature=0.5, return_gates=True, name="gate")
    output, gates = layer([inputs[0], inputs[1:]])
    model = keras.Model(inputs, [output, gates])
    layer([context, branches], training=True)  # move moving_mean_gates
    reference = model.predict([context, *branches], verbose=0)
    model.save(tmp_path / "gated.keras")
    loaded = keras.saving.load_model(tmp_path / "gated.keras", safe_mode=True)
    restored = loaded.predict([context, *branches], verbose=0)
    for a, b in zip(reference, restored, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        to_numpy(loaded.get_layer("gate").moving_mean_gates),
        to_numpy(layer.moving_mean_gates),
    )
    model.save_weights(tmp_path / "gated.weights.h5")
    twin_layer = GatedAverage(top_k=2, temperature=0.5, return_gates=True, name="gate")
    twin = keras.Model(inputs, list(twin_layer([inputs[0], inputs[1:]])))
    twin.load_weights(tmp_path / "gated.weights.h5")
    np.testing.assert_array_equal(
        twin.predict([context, *branches], verbose=0)[0], reference[0]
    )


def test_reload_in_a_fresh_process(tmp_path):
    context, branches, _ = data()
    inputs = [keras.Input(shape=(4,))] + [keras.Input(shape=(3,)) for _ in range(3)]
    model = keras.Model(inputs, GatedAverage(top_k=2)([inputs[0], inputs[1:]]))
    np.save(tmp_path / "inputs.npy", np.concatenate([context, *branches], axis=1))
    np.save(tmp_path / "expected.npy", model.predict([context, *branches], verbose=0))
    model.save(tmp_path / "gated.keras")
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        import keras_tether  # registers the layers
        path = {str(tmp_path / "gated.keras")!r}
        model = keras.saving.load_model(path, safe_mode=True)
        x = np.load({str(tmp_path / "inputs.npy")!r})
        parts = [x[:, :4], x[:, 4:7], x[:, 7:10], x[:, 10:]]
        np.testing.assert_array_equal(
            model.predict(parts, verbose=0), np.load({str(tmp_path / "expected.npy")!r})
        )
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_config_holds_every_argument():
    layer = GatedAverage(
        simplex="softmax",
        temperature=0.3,
        top_k=2,
        top_k_order="top_k_first",
        branch_axis=-1,
        normalize_router_inputs=True,
        router_jitter=0.1,
        router_noise=0.2,
        load_balancing_coefficient=0.01,
        z_loss_coefficient=0.001,
        router_initializer="zeros",
        return_gates=True,
        momentum=0.9,
        seed=4,
    )
    config = layer.get_config()
    revived = GatedAverage.from_config(config)
    assert revived.get_config() == config
    assert config["top_k_order"] == "top_k_first" and config["seed"] == 4
    assert keras_tether.GatedAverage is GatedAverage


INVALID_ARGUMENTS = [
    ({"top_k": 0}, ValueError, r"`top_k`.*positive integer.*top_k=0"),
    ({"top_k": -1}, ValueError, r"top_k=-1"),
    ({"top_k": 1.5}, TypeError, r"`top_k`.*integer"),
    ({"top_k": True}, TypeError, r"`top_k`"),
    ({"top_k_order": "sideways"}, ValueError, r"`top_k_order`.*map_first"),
    ({"temperature": 0}, ValueError, r"`temperature`"),
    ({"temperature": 0.5, "simplex": "sparsemax"}, ValueError, r"no temperature"),
    ({"simplex": "nope"}, ValueError, r"`simplex`"),
    ({"router_jitter": 1.0}, ValueError, r"`router_jitter`.*\[0, 1\)"),
    ({"router_noise": -1.0}, ValueError, r"`router_noise`"),
    ({"load_balancing_coefficient": -0.1}, ValueError, r"load_balancing_coefficient"),
    ({"z_loss_coefficient": "big"}, TypeError, r"z_loss_coefficient"),
    ({"return_gates": 1}, TypeError, r"`return_gates`.*boolean"),
    ({"branch_axis": 0}, ValueError, r"`branch_axis`.*batch axis"),
    ({"momentum": 1.0}, ValueError, r"`momentum`"),
]


@pytest.mark.parametrize("case", range(len(INVALID_ARGUMENTS)))
def test_invalid_arguments_are_named_in_the_error(case):
    kwargs, error, match = INVALID_ARGUMENTS[case]
    with pytest.raises(error, match=match):
        GatedAverage(**kwargs)


def test_invalid_inputs_are_named_in_the_error():
    context, branches, _ = data()
    with pytest.raises(
        ValueError, match=r"`top_k`.*at most the number of branches \(3\)"
    ):
        GatedAverage(top_k=4)([context, branches])
    with pytest.raises(ValueError, match=r"batch axis.*shape \(4,\)"):
        GatedAverage()([context[0], branches])
    with pytest.raises(TypeError, match=r"\[context, branches\]"):
        GatedAverage()(branches)
    with pytest.raises(ValueError, match=r"one shape"):
        GatedAverage()([context, [branches[0], branches[1][:, :2]]])
    with pytest.raises(ValueError, match=r"leading axes"):
        GatedAverage()([context, [b[:3] for b in branches]])
    with pytest.raises(ValueError, match=r"at least 2 branches"):
        GatedAverage()([context, branches[:1]])
    layer = GatedAverage()
    layer([context, branches])
    with pytest.raises(ValueError, match=r"hold 3 branches.*branches holding 2"):
        layer([context, branches[:2]])
    stacked_layer = GatedAverage(branch_axis=1)
    stacked_layer([context, np.stack(branches, axis=1)])
    with pytest.raises(ValueError, match=r"hold 3 branches.*branches holding 4"):
        stacked_layer([context, np.stack(branches + branches[:1], axis=1)])
    with pytest.raises(ValueError, match=r"`branch_axis`.*branch_axis=3"):
        GatedAverage(branch_axis=3)([context, np.stack(branches, axis=1)])
    with pytest.raises(TypeError, match=r"list of tensors.*branches=one tensor"):
        GatedAverage()([context, np.stack(branches, axis=1)])
    with pytest.raises(TypeError, match=r"one tensor.*branch_axis=1"):
        GatedAverage(branch_axis=1)([context, branches])
    with pytest.raises(TypeError, match=r"`\[context, branches\]`.*inputs=one tensor"):
        GatedAverage()(context)
