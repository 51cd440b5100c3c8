"""Tests of `MixtureOfExperts` against a slow NumPy reference loop."""

import math

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

import keras_tether
from keras_tether.layers import MixtureOfExperts


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def np_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expert_weights(layer):
    weights = {
        "router": to_numpy(layer.router.kernel).astype("float64"),
        "w1": to_numpy(layer.expert_input.kernel).astype("float64"),
        "b1": to_numpy(layer.expert_input.bias).astype("float64"),
        "w2": to_numpy(layer.expert_output.kernel).astype("float64"),
        "b2": to_numpy(layer.expert_output.bias).astype("float64"),
    }
    return weights


def np_moe(x, weights, top_k, capacity, mask=None, activation=np_gelu):
    """Routes one group of tokens `(tokens, d)` token by token, GShard-style."""
    x = np.asarray(x, "float64")
    tokens, experts = len(x), weights["router"].shape[1]
    keep = np.ones(tokens, bool) if mask is None else np.asarray(mask, bool)
    probabilities = np_softmax(x @ weights["router"])
    choices = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    load = np.zeros(experts, int)
    output = np.zeros_like(x)
    dropped = 0
    for choice in range(top_k):  # all first choices before any second choice
        for t in range(tokens):
            if not keep[t]:
                continue
            e = choices[t, choice]
            if load[e] >= capacity:
                dropped += 1
                continue
            load[e] += 1
            gate = probabilities[t, e] / probabilities[t, choices[t]].sum()
            hidden = activation(x[t] @ weights["w1"][e] + weights["b1"][e])
            output[t] += gate * (hidden @ weights["w2"][e] + weights["b2"][e])
    return output, dropped


def random_tokens(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def randomize_biases(layer, seed=1):
    rng = np.random.default_rng(seed)
    for variable in (layer.expert_input.bias, layer.expert_output.bias):
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.3)


@pytest.mark.parametrize(
    ("dispatch", "capacity_factor"),
    [("dropless", None), ("sparse", None), ("sparse", 0.5), ("dense", 0.5)],
)
def test_matches_the_reference_loop(dispatch, capacity_factor):
    x = random_tokens((2, 8, 6))
    layer = MixtureOfExperts(
        num_experts=4,
        hidden_units=5,
        top_k=2,
        capacity_factor=capacity_factor,
        dispatch=dispatch,
    )
    layer(x)
    randomize_biases(layer)
    output = to_numpy(layer(x, training=True))
    weights = expert_weights(layer)
    capacity = 8 if capacity_factor is None else math.ceil(capacity_factor * 8 * 2 / 4)
    expected, dropped = zip(
        *(np_moe(group, weights, 2, capacity) for group in x), strict=True
    )
    np.testing.assert_allclose(output, np.stack(expected), atol=2e-5)
    if capacity_factor == 0.5:
        assert sum(dropped) > 0
    np.testing.assert_allclose(
        layer.dropped_fraction, sum(dropped) / (2 * 8 * 2), atol=1e-7
    )
    layer.reset_assignment_counts()
    assert layer.dropped_fraction == 0.0


def test_a_batch_of_single_tokens_is_one_group():
    x = random_tokens((10, 6), seed=2)
    layer = MixtureOfExperts(
        num_experts=3, hidden_units=4, top_k=1, capacity_factor=0.9, dispatch="sparse"
    )
    output = to_numpy(layer(x))
    expected, dropped = np_moe(x, expert_weights(layer), 1, math.ceil(0.9 * 10 / 3))
    np.testing.assert_allclose(output, expected, atol=2e-5)


def test_padding_is_not_routed_and_takes_no_capacity():
    x = random_tokens((2, 8, 6), seed=3)
    mask = np.array([[1] * 6 + [0] * 2, [1] * 4 + [0] * 4], bool)
    layer = MixtureOfExperts(
        num_experts=4, hidden_units=5, top_k=1, capacity_factor=1.0, dispatch="sparse"
    )
    output = to_numpy(layer(x, mask=mask))
    weights = expert_weights(layer)
    for group in range(2):
        expected, _ = np_moe(x[group], weights, 1, 2, mask=mask[group])
        np.testing.assert_allclose(output[group], expected, atol=2e-5)
    assert (output[~mask] == 0).all()


def test_residual_passes_dropped_tokens_through():
    x = random_tokens((2, 8, 6), seed=4)
    layer = MixtureOfExperts(
        num_experts=4,
        hidden_units=5,
        top_k=1,
        capacity_factor=0.5,
        dispatch="sparse",
        residual=True,
    )
    output = to_numpy(layer(x))
    expected, dropped = np_moe(x[0], expert_weights(layer), 1, 1)
    assert dropped > 0
    np.testing.assert_allclose(output[0], x[0] + expected, atol=2e-5)


def sgd_step(layer, x, target):
    inputs = keras.Input(shape=x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    before = [to_numpy(w) for w in layer.trainable_weights]
    model.train_on_batch(x, target)
    return [
        b - to_numpy(w) for b, w in zip(before, layer.trainable_weights, strict=True)
    ]


@pytest.mark.parametrize("dispatch", ["sparse", "dropless"])
def test_dispatch_gives_the_outputs_and_gradients_of_dense(dispatch):
    # Unlimited capacity; with a capacity, both match the reference loop above.
    capacity_factor = None
    x = random_tokens((2, 8, 6), seed=5)
    target = random_tokens((2, 8, 6), seed=6)
    kwargs = {
        "num_experts": 4,
        "hidden_units": 5,
        "top_k": 2,
        "capacity_factor": capacity_factor,
        "gated_linear_unit": True,
        "activation": "silu",
        "shared_expert_units": 3,
        "z_loss_coefficient": 0.01,
    }
    sparse = MixtureOfExperts(dispatch=dispatch, **kwargs)
    dense = MixtureOfExperts(dispatch="dense", **kwargs)
    sparse(x)
    dense(x)
    dense.set_weights(sparse.get_weights())
    np.testing.assert_allclose(
        to_numpy(sparse(x)), to_numpy(dense(x)), rtol=1e-5, atol=1e-6
    )
    sparse_steps = sgd_step(sparse, x, target)
    dense_steps = sgd_step(dense, x, target)
    for weight, a, b in zip(
        sparse.trainable_weights, sparse_steps, dense_steps, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=weight.path)
    assert all(np.abs(step).max() > 0 for step in sparse_steps)


def test_load_balancing_loss_is_added_in_training():
    x = random_tokens((2, 8, 6), seed=7)
    layer = MixtureOfExperts(
        num_experts=4, hidden_units=5, load_balancing_coefficient=0.5
    )
    layer(x)
    assert layer.losses == []
    layer(x, training=True)
    (loss,) = layer.losses
    tokens = x.reshape(-1, 6).astype("float64")
    probabilities = np_softmax(tokens @ to_numpy(layer.router.kernel))
    top = np.argsort(-probabilities, axis=-1, kind="stable")[:, :2]
    share = np.bincount(top.ravel(), minlength=4) / top.size
    expected = 0.5 * 4 * float(share @ probabilities.mean(0))
    np.testing.assert_allclose(float(to_numpy(loss)), expected, rtol=1e-5)


def test_shared_expert_is_sigmoid_gated():
    x = random_tokens((2, 8, 6), seed=8)
    layer = MixtureOfExperts(
        num_experts=4, hidden_units=5, shared_expert_units=5, capacity_factor=None
    )
    output = to_numpy(layer(x))
    routed = MixtureOfExperts(num_experts=4, hidden_units=5, capacity_factor=None)
    routed(x)
    routed.set_weights(
        [to_numpy(w) for w in layer.weights if "shared_expert" not in w.path]
    )
    shared = layer.shared_expert
    tokens = x.astype("float64")
    hidden = np_gelu(
        tokens @ to_numpy(shared.input_projection.kernel)
        + to_numpy(shared.input_projection.bias)
    )
    expert = hidden @ to_numpy(shared.output_projection.kernel) + to_numpy(
        shared.output_projection.bias
    )
    gate = 1 / (1 + np.exp(-(tokens @ to_numpy(shared.expert_gate.kernel))))
    np.testing.assert_allclose(output, to_numpy(routed(x)) + gate * expert, atol=2e-5)


def test_experts_are_initialized_like_separate_dense_layers():
    layer = MixtureOfExperts(num_experts=8, hidden_units=64, use_bias=False)
    layer(np.zeros((1, 2, 64), "float32"))
    kernel = to_numpy(layer.expert_input.kernel)
    # Glorot uniform of a (64, 64) Dense: std sqrt(2 / 128) = 0.125 per expert,
    # where fans counting the expert axis would give 0.125 / sqrt(8).
    np.testing.assert_allclose(kernel.std(axis=(1, 2)), 0.125, rtol=0.1)
    assert not np.allclose(kernel[0], kernel[1])


def test_fit_runs_under_the_default_compilation():
    # JAX and TensorFlow trace and compile the training step, torch runs eagerly.
    x = random_tokens((8, 8, 6), seed=9)
    for dispatch, capacity_factor in [("sparse", 1.0), ("dropless", None)]:
        inputs = keras.Input(shape=(8, 6))
        layer = MixtureOfExperts(
            num_experts=4,
            hidden_units=5,
            capacity_factor=capacity_factor,
            dispatch=dispatch,
        )
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer="adam", loss="mse")
        history = model.fit(x, x, batch_size=4, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert float(to_numpy(layer.routed_assignments)) == 2 * 2 * 4 * 8 * 2


def test_dropless_trains_under_jit_compile_on_a_masked_batch():
    x = random_tokens((4, 8, 6), seed=19)
    x[:, 6:] = 0.0
    inputs = keras.Input(shape=(8, 6))
    masked = keras.layers.Masking(0.0)(inputs)
    layer = MixtureOfExperts(num_experts=4, hidden_units=5, gated_linear_unit=True)
    model = keras.Model(inputs, layer(masked))
    model.compile(
        optimizer="sgd", loss="mse", jit_compile=keras.backend.backend() != "torch"
    )
    model.fit(x, x, batch_size=4, epochs=1, verbose=0)
    # Only the 6 unmasked tokens of each example are routed, 2 choices each.
    assert float(to_numpy(layer.routed_assignments)) == 4 * 6 * 2
    assert layer.dropped_fraction == 0.0


@pytest.mark.parametrize(
    ("dispatch", "capacity_factor"), [("sparse", 2.0), ("dropless", None)]
)
def test_conformance(dispatch, capacity_factor):
    run_layer_test(
        MixtureOfExperts,
        random_tokens((4, 5, 6), seed=10),
        init_kwargs={
            "num_experts": 4,
            "hidden_units": 8,
            "top_k": 2,
            "capacity_factor": capacity_factor,
            "dispatch": dispatch,
            "gated_linear_unit": True,
            "shared_expert_units": 4,
            "normalize_router_inputs": True,
        },
        expected_output_shape=(4, 5, 6),
        # router kernel, layer norm (2), experts 3 x (kernel, bias), shared
        # expert 3 x (kernel, bias) + its gate.
        expected_num_trainable_weights=16,
        expected_num_non_trainable_weights=2,
        atol=1e-6,
    )


def test_saving_keeps_counts_and_outputs(tmp_path):
    x = random_tokens((2, 8, 6), seed=11)
    inputs = keras.Input(shape=(8, 6))
    layer = MixtureOfExperts(
        num_experts=4, hidden_units=5, capacity_factor=0.5, dispatch="sparse", name="m"
    )
    model = keras.Model(inputs, layer(inputs))
    layer(x, training=True)
    reference = model.predict(x, verbose=0)
    model.save(tmp_path / "moe.keras")
    loaded = keras.saving.load_model(tmp_path / "moe.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), reference)
    assert loaded.get_layer("m").dropped_fraction == layer.dropped_fraction > 0
    assert loaded.get_layer("m").get_config() == layer.get_config()
    assert keras_tether.MixtureOfExperts is MixtureOfExperts


INVALID_ARGUMENTS = [
    ({"num_experts": 0}, ValueError, r"`num_experts`.*positive integer.*num_experts=0"),
    ({"hidden_units": 2.0}, TypeError, r"`hidden_units`"),
    ({"top_k": 0}, ValueError, r"`top_k`.*top_k=0"),
    ({"top_k": 5}, ValueError, r"`top_k`.*at most the number of experts \(4\)"),
    ({"capacity_factor": 0}, ValueError, r"`capacity_factor`.*positive"),
    ({"capacity_factor": -1.0}, ValueError, r"capacity_factor=-1.0"),
    ({"capacity_factor": "auto"}, TypeError, r"`capacity_factor`"),
    ({"dispatch": "ragged"}, ValueError, r"`dispatch`.*dropless.*sparse"),
    ({"capacity_factor": 1.25}, ValueError, r"`capacity_factor`.*dropless.*=1.25"),
    ({"shared_expert_units": 0}, ValueError, r"`shared_expert_units`"),
    ({"residual": "yes"}, TypeError, r"`residual`.*boolean"),
    ({"router_jitter": 2.0}, ValueError, r"`router_jitter`"),
]


@pytest.mark.parametrize("case", range(len(INVALID_ARGUMENTS)))
def test_invalid_arguments_are_named_in_the_error(case):
    kwargs, error, match = INVALID_ARGUMENTS[case]
    with pytest.raises(error, match=match):
        MixtureOfExperts(**{"num_experts": 4, "hidden_units": 3, **kwargs})


def test_invalid_inputs_are_named_in_the_error():
    with pytest.raises(ValueError, match=r"batch axis.*shape \(6,\)"):
        MixtureOfExperts(num_experts=2, hidden_units=3)(np.zeros((6,), "float32"))
    with pytest.raises(ValueError, match=r"known sizes.*\(None, None, 4\)"):
        MixtureOfExperts(num_experts=2, hidden_units=3)(keras.Input(shape=(None, 4)))


def test_route_returns_each_tokens_experts_and_gates():
    x = random_tokens((2, 8, 6), seed=12)
    layer = MixtureOfExperts(num_experts=4, hidden_units=5, top_k=2)
    chosen, gates = (to_numpy(t) for t in layer.route(x))
    probabilities = np_softmax(x.astype("float64") @ to_numpy(layer.router.kernel))
    expected = np.argsort(-probabilities, axis=-1, kind="stable")[..., :2]
    np.testing.assert_array_equal(chosen, expected)
    top = np.take_along_axis(probabilities, expected, -1)
    np.testing.assert_allclose(gates, top / top.sum(-1, keepdims=True), atol=1e-6)


def np_sparsemax(z):
    z_sorted = -np.sort(-z, axis=-1)
    cumulative = np.cumsum(z_sorted, axis=-1)
    ranks = np.arange(1, z.shape[-1] + 1)
    support = (1 + ranks * z_sorted > cumulative).sum(-1, keepdims=True)
    tau = (np.take_along_axis(cumulative, support - 1, -1) - 1) / support
    return np.maximum(z - tau, 0.0)


def test_choices_with_a_zero_gate_are_neither_routed_nor_dropped():
    x = random_tokens((1, 16, 6), seed=13)
    layer = MixtureOfExperts(
        num_experts=4,
        hidden_units=5,
        top_k=2,
        simplex="sparsemax",
        capacity_factor=0.5,
        dispatch="sparse",
    )
    layer(x)
    layer.router.kernel.assign(3.0 * to_numpy(layer.router.kernel))
    layer(x, training=True)
    probabilities = np_sparsemax(x[0].astype("float64") @ to_numpy(layer.router.kernel))
    choices = np.argsort(-probabilities, axis=-1, kind="stable")[:, :2]
    gates = np.take_along_axis(probabilities, choices, -1)
    capacity = math.ceil(0.5 * 16 * 2 / 4)
    load, routed, dropped = np.zeros(4, int), 0, 0
    for choice in range(2):
        for token in range(16):
            if gates[token, choice] == 0:
                continue
            routed += 1
            expert = choices[token, choice]
            if load[expert] >= capacity:
                dropped += 1
            else:
                load[expert] += 1
    assert 0 < routed < 32, routed  # some second choices have a zero gate
    assert float(to_numpy(layer.routed_assignments)) == routed
    np.testing.assert_allclose(layer.dropped_fraction, dropped / routed, atol=1e-7)
    dropless = MixtureOfExperts.from_config(
        {**layer.get_config(), "dispatch": "dropless", "capacity_factor": None}
    )
    dropless(x)
    dropless.set_weights(layer.get_weights())
    dropless.reset_assignment_counts()
    dropless(x, training=True)
    assert float(to_numpy(dropless.routed_assignments)) == routed
    assert dropless.dropped_fraction == 0.0


def test_a_configuration_naming_experts_still_loads():
    config = MixtureOfExperts(num_experts=3, hidden_units=4).get_config()
    config["experts"] = config.pop("num_experts")
    assert MixtureOfExperts.from_config(config).num_experts == 3
