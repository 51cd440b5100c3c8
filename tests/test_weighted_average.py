"""Tests of `WeightedAverage` against NumPy formulas and finite differences."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops
from layer_conformance import run_layer_test

import keras_tether
from keras_tether import simplex
from keras_tether.layers import WeightedAverage, weighted_average
from keras_tether.layers import _weighted_average as weighted_average_module

MAPS = ["softmax", "sparsemax", "entmax15", "relu_normalized", "gumbel_softmax"]
# The normalized ReLU divides by `sum + epsilon`, so its weights sum to one
# only up to about epsilon; the other maps are exact up to float32 rounding.
SUM_TOLERANCE = {"relu_normalized": 2e-3}
FD_STEP = 1e-6


# NumPy references, written from the definitions of the maps.


def np_softmax(logits, axis=0, temperature=1.0):
    z = np.asarray(logits, "float64") / temperature
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def np_sparsemax(logits):
    z = np.asarray(logits, "float64")
    ordered = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    support = 1 + k * ordered > np.cumsum(ordered)
    tau = (ordered[support].sum() - 1) / support.sum()
    return np.maximum(z - tau, 0)


def np_entmax15(logits):
    # Bisection on tau for sum_i max(z_i / 2 - tau, 0)^2 = 1.
    z = np.asarray(logits, "float64") / 2
    low, high = z.max() - 1, z.max()
    for _ in range(200):
        tau = (low + high) / 2
        if (np.maximum(z - tau, 0) ** 2).sum() > 1:
            low = tau
        else:
            high = tau
    return np.maximum(z - tau, 0) ** 2


def np_relu_normalized(logits, epsilon=1e-4):
    r = np.maximum(np.asarray(logits, "float64"), 0)
    return r / (r.sum() + epsilon)


NP_MAPS = {
    "softmax": np_softmax,
    "sparsemax": np_sparsemax,
    "entmax15": np_entmax15,
    "relu_normalized": np_relu_normalized,
}


def np_mix(weights, inputs):
    return sum(
        w * np.asarray(x, "float64") for w, x in zip(weights, inputs, strict=True)
    )


def random_inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for shape in shapes]


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# Conformance.

CONFORMANCE_CASES = {
    "default": ({}, [(4, 6)] * 3, (4, 6), 1),
    "temperature": ({"temperature": 0.5}, [(4, 6)] * 2, (4, 6), 1),
    "sparsemax_per_feature": (
        {"simplex": "sparsemax", "feature_axis": -1},
        [(4, 6)] * 3,
        (4, 6),
        1,
    ),
    "entmax_initial_weights": (
        {"simplex": "entmax15", "initial_weights": [0.5, 0.3, 0.2]},
        [(4, 6)] * 3,
        (4, 6),
        1,
    ),
    "relu_scale_normalize": (
        {"simplex": "relu_normalized", "scale": True, "normalize_inputs": True},
        [(4, 3, 6)] * 2,
        (4, 3, 6),
        2,
    ),
    "gumbel_broadcast": (
        {"simplex": "gumbel_softmax", "temperature": 2.0, "seed": 3},
        [(4, 6), (4, 3, 6), (4, 3, 1)],
        (4, 3, 6),
        1,
    ),
    "feature_axis_1": ({"feature_axis": 1}, [(4, 5, 2)] * 2, (4, 5, 2), 1),
}


@pytest.mark.parametrize("case", sorted(CONFORMANCE_CASES))
def test_conformance(case):
    init_kwargs, shapes, output_shape, num_trainable = CONFORMANCE_CASES[case]
    run_layer_test(
        WeightedAverage,
        random_inputs(shapes),
        init_kwargs=init_kwargs,
        list_input=True,
        expected_output_shape=output_shape,
        expected_num_trainable_weights=num_trainable,
    )


def test_conformance_with_branch_dropout_and_regularizer():
    from keras_tether.regularizers import EntropyRegularizer

    run_layer_test(
        WeightedAverage,
        random_inputs([(4, 6)] * 3),
        init_kwargs={
            "branch_dropout": 0.3,
            "seed": 7,
            "mixture_regularizer": EntropyRegularizer(0.1, toward="uniform"),
        },
        list_input=True,
        expected_output_shape=(4, 6),
        expected_num_trainable_weights=1,
        # A dropped branch gets no gradient in its step, so "every weight
        # moves" is not guaranteed; branch dropout is tested on its own below.
        run_training_check=False,
    )


# Outputs against NumPy.


INITIAL_WEIGHT_CASES = {
    # Maps that reach zero start with a zero weight, the others without.
    "softmax": ("softmax", [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]),
    "sparsemax": ("sparsemax", [0.7, 0.3, 0.0], [0.7, 0.3, 0.0]),
    "entmax15": ("entmax15", [0.7, 0.3, 0.0], [0.7, 0.3, 0.0]),
    "relu_normalized": ("relu_normalized", [0.7, 0.3, 0.0], [0.7, 0.3, 0.0]),
    # A soft Gumbel-softmax is the tempered softmax at inference; a hard one
    # picks the branch of largest weight.
    "gumbel_soft": (
        {"class_name": "GumbelSoftmax", "config": {"hard": False}},
        [0.5, 0.3, 0.2],
        [0.5, 0.3, 0.2],
    ),
    "gumbel_hard": ("gumbel_softmax", [0.3, 0.5, 0.2], [0.0, 1.0, 0.0]),
}


@pytest.mark.parametrize("case", sorted(INITIAL_WEIGHT_CASES))
def test_initial_weights_give_numpy_weighted_sum(case):
    simplex_identifier, weights, inference_weights = INITIAL_WEIGHT_CASES[case]
    inputs = random_inputs([(5, 4)] * 3)
    layer = WeightedAverage(simplex=simplex_identifier, initial_weights=weights)
    output = to_numpy(layer(inputs))
    atol = SUM_TOLERANCE.get(case, 1e-5)
    np.testing.assert_allclose(output, np_mix(inference_weights, inputs), atol=atol * 4)
    np.testing.assert_allclose(layer.mixture_weights, inference_weights, atol=atol)


def test_default_is_the_plain_average():
    inputs = random_inputs([(3, 2, 5)] * 4)
    output = to_numpy(WeightedAverage()(inputs))
    np.testing.assert_allclose(output, np.mean(inputs, axis=0), atol=1e-6)


@pytest.mark.parametrize("simplex_name", sorted(NP_MAPS))
def test_weights_follow_numpy_map_of_logits(simplex_name):
    logits = np.array([1.3, -0.4, 0.9, 0.2], "float32")
    inputs = random_inputs([(3, 5)] * 4, seed=1)
    layer = WeightedAverage(simplex=simplex_name)
    layer(inputs)
    layer.logits.assign(logits)
    expected = NP_MAPS[simplex_name](logits)
    np.testing.assert_allclose(layer.mixture_weights, expected, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(layer(inputs)), np_mix(expected, inputs), atol=1e-5
    )


def test_temperature_divides_the_logits():
    logits = np.array([0.8, -0.3, 0.1], "float32")
    inputs = random_inputs([(2, 3)] * 3, seed=2)
    layer = WeightedAverage(temperature=0.25)
    layer(inputs)
    layer.logits.assign(logits)
    expected = np_softmax(logits, temperature=0.25)
    np.testing.assert_allclose(layer.mixture_weights, expected, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(layer(inputs)), np_mix(expected, inputs), atol=1e-5
    )


def test_temperature_is_applied_to_a_map_object():
    layer = WeightedAverage(simplex=simplex.GumbelSoftmax(hard=False), temperature=3.0)
    assert layer.simplex.get_config()["temperature"] == 3.0
    assert layer.simplex.get_config()["hard"] is False


def test_per_feature_weights_along_last_axis():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 4)).astype("float32")
    inputs = random_inputs([(5, 4)] * 3, seed=3)
    layer = WeightedAverage(feature_axis=-1)
    layer(inputs)
    assert tuple(layer.logits.shape) == (3, 4)
    layer.logits.assign(logits)
    weights = np_softmax(logits, axis=0)
    np.testing.assert_allclose(layer.mixture_weights, weights, atol=1e-6)
    np.testing.assert_allclose(layer.mixture_weights.sum(axis=0), 1, atol=1e-6)
    expected = sum(weights[i] * inputs[i] for i in range(3))
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-5)


def test_per_feature_weights_along_a_middle_axis():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3)).astype("float32")
    inputs = random_inputs([(2, 3, 5)] * 2, seed=4)
    layer = WeightedAverage(feature_axis=1)
    layer(inputs)
    layer.logits.assign(logits)
    weights = np_softmax(logits, axis=0)
    expected = sum(weights[i][None, :, None] * inputs[i] for i in range(2))
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-5)


def test_per_feature_initial_weights_by_column():
    weights = np.array([[0.9, 0.2], [0.1, 0.8]])
    inputs = random_inputs([(3, 2)] * 2, seed=5)
    layer = WeightedAverage(feature_axis=-1, initial_weights=weights.tolist())
    expected = weights[0] * inputs[0] + weights[1] * inputs[1]
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-5)
    shared = WeightedAverage(feature_axis=-1, initial_weights=[0.9, 0.1])
    shared(inputs)
    np.testing.assert_allclose(
        shared.mixture_weights, [[0.9, 0.9], [0.1, 0.1]], atol=1e-6
    )


def test_scale_multiplies_the_mixture():
    inputs = random_inputs([(2, 3)] * 2, seed=6)
    layer = WeightedAverage(initial_weights=[0.6, 0.4], scale=True)
    layer(inputs)
    layer.gamma.assign(2.5)
    expected = 2.5 * np_mix([0.6, 0.4], inputs)
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-5)
    np.testing.assert_allclose(layer.mixture_weights, [0.6, 0.4], atol=1e-6)


BROADCAST_CASES = [
    [(None, 4), (None, 4)],
    [(None, 4), (None, 1)],
    [(None, 3, 4), (None, 4), (None, 3, 1)],
    [(None, 2, 1, 5), (None, 7, 1), (None, 2, 7, 5)],
]


def test_broadcasting_matches_numpy():
    for shapes in BROADCAST_CASES:
        check_broadcasting(shapes)


def check_broadcasting(shapes):
    layer = WeightedAverage(initial_weights=[1 / len(shapes)] * len(shapes))
    expected_tail = np.broadcast_shapes(*[shape[1:] for shape in shapes])
    assert layer.compute_output_shape(shapes) == (None, *expected_tail)
    inputs = random_inputs([(2, *shape[1:]) for shape in shapes], seed=7)
    rank = 1 + len(expected_tail)
    # Keras merge layers align a lower-rank input by expanding it after the
    # batch axis, so the non-batch axes line up from the right.
    aligned = [
        x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:]) for x in inputs
    ]
    expected = np.mean(np.broadcast_arrays(*aligned), axis=0)
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-5)


def test_functional_form_matches_the_layer():
    inputs = random_inputs([(2, 3)] * 2, seed=8)
    output = weighted_average(inputs, initial_weights=[0.25, 0.75])
    np.testing.assert_allclose(
        to_numpy(output), np_mix([0.25, 0.75], inputs), atol=1e-5
    )
    symbolic = [keras.Input(shape=(3,)) for _ in range(2)]
    model = keras.Model(symbolic, weighted_average(symbolic, name="mix"))
    assert isinstance(model.get_layer("mix"), WeightedAverage)
    assert model.output_shape == (None, 3)


# Gradients against finite differences of a NumPy reimplementation.


def np_mse(params, inputs, target, simplex_name, temperature, scale, axis):
    logits, gamma = params
    if simplex_name == "softmax":
        weights = np_softmax(logits, axis=0, temperature=temperature)
    else:
        weights = NP_MAPS[simplex_name](logits)
    if axis is not None:
        weights = weights[:, None, :]
    output = sum(weights[i] * inputs[i] for i in range(len(inputs)))
    output = gamma * output if scale else output
    return np.mean((output - target) ** 2)


def finite_differences(f, params):
    grads = []
    for index, value in enumerate(params):
        value = np.asarray(value, "float64")
        grad = np.zeros_like(value)
        for position in np.ndindex(value.shape):
            shifted = []
            for sign in (1, -1):
                moved = value.copy()
                moved[position] += sign * FD_STEP
                shifted.append(f([*params[:index], moved, *params[index + 1 :]]))
            grad[position] = (shifted[0] - shifted[1]) / (2 * FD_STEP)
        grads.append(grad)
    return grads


GRADIENT_CASES = {
    "softmax_scaled": ("softmax", 0.7, True, None, [0.6, -0.2, 0.1]),
    "softmax_per_feature": (
        "softmax",
        None,
        False,
        -1,
        [[0.3, -0.5], [0.0, 0.4], [-0.2, 0.1]],
    ),
    "sparsemax": ("sparsemax", None, False, None, [0.6, 0.35, 0.2]),
    "entmax15": ("entmax15", None, True, None, [0.9, 0.4, 0.1]),
    "relu_normalized": ("relu_normalized", None, False, None, [1.2, 0.5, 0.8]),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_match_finite_differences(case):
    simplex_name, temperature, scale, axis, logits = GRADIENT_CASES[case]
    logits = np.array(logits, "float32")
    inputs = random_inputs([(6, 2)] * 3, seed=9)
    target = random_inputs([(6, 2)], seed=10)[0]
    gamma = 1.7
    symbolic = [keras.Input(shape=(2,)) for _ in range(3)]
    layer = WeightedAverage(
        simplex=simplex_name, temperature=temperature, scale=scale, feature_axis=axis
    )
    model = keras.Model(symbolic, layer(symbolic))
    layer.logits.assign(logits)
    if scale:
        layer.gamma.assign(gamma)
    # One SGD step with learning rate 1 moves each variable by minus its gradient.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.train_on_batch(inputs, target)
    layer_grad = logits - to_numpy(layer.logits)
    inputs64 = [x.astype("float64") for x in inputs]

    def loss(params):
        return np_mse(
            params, inputs64, target, simplex_name, temperature or 1, scale, axis
        )

    logits_grad, gamma_grad = finite_differences(loss, [logits, gamma])
    np.testing.assert_allclose(layer_grad, logits_grad, rtol=1e-3, atol=1e-6)
    assert np.abs(logits_grad).max() > 1e-3
    if scale:
        np.testing.assert_allclose(
            gamma - float(to_numpy(layer.gamma)), gamma_grad, rtol=1e-3, atol=1e-6
        )


def test_gradients_reach_the_branches():
    # d(loss)/d(x_i) = w_i * d(loss)/d(output): check it on a Dense branch.
    x = random_inputs([(4, 3)], seed=11)[0]
    target = random_inputs([(4, 2)], seed=12)[0]
    symbolic = keras.Input(shape=(3,))
    branch = keras.layers.Dense(2, use_bias=False, kernel_initializer="zeros")
    constant = keras.layers.Dense(
        2, use_bias=False, kernel_initializer="zeros", trainable=False
    )
    mixed = WeightedAverage(initial_weights=[0.3, 0.7])(
        [branch(symbolic), constant(symbolic)]
    )
    model = keras.Model(symbolic, mixed)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.train_on_batch(x, target)
    # output = 0.3 * x @ K with K = 0, so d(mse)/dK = 0.3 * x^T (0 - target) * 2 / size.
    expected_grad = 0.3 * x.T @ (-target) * 2 / target.size
    np.testing.assert_allclose(
        -to_numpy(branch.kernel), expected_grad, rtol=1e-4, atol=1e-7
    )


# Masks.


def test_compute_mask_is_the_or_of_input_masks():
    layer = WeightedAverage()
    inputs = random_inputs([(2, 3, 4)] * 2)
    layer(inputs)
    m1 = np.array([[True, False, False], [True, True, False]])
    m2 = np.array([[False, False, True], [True, False, False]])
    mask = layer.compute_mask(inputs, [m1, m2])
    np.testing.assert_array_equal(to_numpy(mask), m1 | m2)
    assert layer.compute_mask(inputs, [m1, None]) is None
    assert layer.compute_mask(inputs, None) is None


def test_mask_propagates_to_the_next_layer():
    x1 = np.array([[[1.0], [2.0], [0.0]], [[3.0], [0.0], [0.0]]], "float32")
    x2 = np.array([[[5.0], [0.0], [0.0]], [[1.0], [1.0], [0.0]]], "float32")
    symbolic = [keras.Input(shape=(3, 1)) for _ in range(2)]
    masked = [keras.layers.Masking(0.0)(x) for x in symbolic]
    mixed = WeightedAverage(initial_weights=[0.5, 0.5])(masked)
    pooled = keras.layers.GlobalAveragePooling1D()(mixed)
    model = keras.Model(symbolic, pooled)
    mix = 0.5 * x1 + 0.5 * x2
    mask = (x1[..., 0] != 0) | (x2[..., 0] != 0)
    expected = (mix[..., 0] * mask).sum(axis=1) / mask.sum(axis=1)
    np.testing.assert_allclose(to_numpy(model([x1, x2]))[:, 0], expected, atol=1e-6)


def np_normalize(x, mask=None):
    x = np.asarray(x, "float64")
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        keep = np.ones(x.shape[1:], bool)
        if mask is not None:
            keep = np.broadcast_to(
                mask[b].reshape(mask[b].shape + (1,) * (x.ndim - mask.ndim)),
                x.shape[1:],
            )
        values = x[b][keep]
        out[b] = (x[b] - values.mean()) / np.sqrt(values.var() + 1e-6)
    return out


def test_normalize_inputs_without_mask():
    inputs = [x * 5 + 3 for x in random_inputs([(3, 4, 6)] * 2, seed=13)]
    layer = WeightedAverage(normalize_inputs=True, initial_weights=[0.4, 0.6])
    expected = 0.4 * np_normalize(inputs[0]) + 0.6 * np_normalize(inputs[1])
    np.testing.assert_allclose(to_numpy(layer(inputs)), expected, atol=1e-4)


def test_normalize_inputs_ignores_masked_positions():
    inputs = [x * 5 + 3 for x in random_inputs([(2, 4, 3)] * 2, seed=14)]
    masks = [
        np.array([[True, True, False, False], [True, True, True, False]]),
        np.array([[True, False, True, True], [True, True, True, True]]),
    ]
    layer = WeightedAverage(normalize_inputs=True, initial_weights=[0.5, 0.5])
    output = to_numpy(layer(inputs, mask=masks))
    expected = 0.5 * np_normalize(inputs[0], masks[0]) + 0.5 * np_normalize(
        inputs[1], masks[1]
    )
    np.testing.assert_allclose(output, expected, atol=1e-4)
    # The statistics differ from the unmasked ones, so the mask was used.
    assert not np.allclose(output, to_numpy(layer(inputs)), atol=1e-2)


# Branch dropout and Gumbel-softmax sampling.

BRANCH_VALUES = np.array([1.0, 10.0, 100.0, 1000.0])


def constant_inputs(values, shape=(2, 3)):
    return [np.full(shape, v, "float32") for v in values]


def test_branch_dropout_renormalizes_over_kept_branches():
    layer = WeightedAverage(branch_dropout=0.5, seed=1)
    inputs = constant_inputs(BRANCH_VALUES)
    subsets = [np.array([(s >> i) & 1 for i in range(4)], bool) for s in range(1, 16)]
    means = np.array([BRANCH_VALUES[s].mean() for s in subsets])
    seen, dropped = set(), 0
    for _ in range(40):
        output = to_numpy(layer(inputs, training=True))
        assert np.all(output == output.flat[0])
        match = np.flatnonzero(np.isclose(means, output.flat[0], rtol=1e-5))
        assert len(match) == 1, output.flat[0]
        seen.add(int(match[0]))
        dropped += 4 - subsets[match[0]].sum()
    assert len(seen) >= 4
    # 160 draws at rate 0.5, a little less since an all-dropped draw keeps all.
    assert 0.3 < dropped / 160 < 0.6
    inference = to_numpy(layer(inputs, training=False))
    np.testing.assert_allclose(inference, BRANCH_VALUES.mean(), rtol=1e-5)


def test_branch_dropout_keeps_weights_summing_to_one():
    layer = WeightedAverage(
        simplex="sparsemax", branch_dropout=0.7, feature_axis=-1, seed=2
    )
    inputs = constant_inputs([1.0] * 5)
    for _ in range(10):
        np.testing.assert_allclose(
            to_numpy(layer(inputs, training=True)), 1.0, atol=1e-6
        )


def test_gumbel_softmax_samples_one_branch_in_training():
    layer = WeightedAverage(simplex="gumbel_softmax", seed=3)
    inputs = constant_inputs(BRANCH_VALUES)
    picked = set()
    for _ in range(30):
        output = to_numpy(layer(inputs, training=True))
        match = np.flatnonzero(np.isclose(BRANCH_VALUES, output.flat[0], rtol=1e-5))
        assert len(match) == 1, output.flat[0]
        picked.add(int(match[0]))
    assert len(picked) >= 3
    first = to_numpy(layer(inputs))
    np.testing.assert_array_equal(first, to_numpy(layer(inputs)))
    np.testing.assert_allclose(first, np_mix(layer.mixture_weights, inputs), rtol=1e-5)


# Dtypes and extreme values.

EXTREME_LOGITS = np.array([1e4, -1e4, 0.0], "float32")


@pytest.mark.parametrize("simplex_name", MAPS)
def test_extreme_logits_stay_finite(simplex_name):
    for policy in ("float32", "mixed_float16", "mixed_bfloat16", "float16"):
        keras.config.set_dtype_policy(policy)
        check_extreme_logits(simplex_name)


def check_extreme_logits(simplex_name):
    inputs = [x * 100 for x in random_inputs([(2, 3)] * 3, seed=15)]
    temperature = 1e-4 if simplex_name in ("softmax", "gumbel_softmax") else None
    layer = WeightedAverage(simplex=simplex_name, temperature=temperature)
    layer(inputs)
    assert layer.logits.dtype == "float32"
    for logits in (
        EXTREME_LOGITS,
        -EXTREME_LOGITS,
        np.array([1e4, 1e4, -1e4], "float32"),
    ):
        layer.logits.assign(logits)
        for training in (False, True):
            output = layer(inputs, training=training)
            assert keras.backend.standardize_dtype(output.dtype) == layer.compute_dtype
            assert np.all(np.isfinite(to_numpy(output).astype("float32")))
        weights = layer.mixture_weights
        assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
        np.testing.assert_allclose(
            weights.sum(), 1, atol=SUM_TOLERANCE.get(simplex_name, 1e-6)
        )


def test_mixed_precision_computes_weights_in_float32():
    # float16 rounds 1000.1 and 1000.3 to 1000.0 and 1000.5, which would give
    # weights [0.38, 0.62] instead of softmax([-0.1, 0.1]) = [0.45, 0.55].
    keras.config.set_dtype_policy("mixed_float16")
    inputs = constant_inputs([0.0, 1.0])
    layer = WeightedAverage()
    layer(inputs)
    layer.logits.assign(np.array([1000.1, 1000.3], "float32"))
    expected = np_softmax(np.array([1000.1, 1000.3], "float32"))
    np.testing.assert_allclose(layer.mixture_weights, expected, atol=1e-4)
    output = to_numpy(layer(inputs)).astype("float32")
    np.testing.assert_allclose(output, expected[1], atol=1e-3)


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_trainable_false_freezes_the_weights():
    inputs = random_inputs([(4, 3)] * 2, seed=16)
    symbolic = [keras.Input(shape=(3,)) for _ in range(2)]
    layer = WeightedAverage(scale=True, trainable=False, initial_weights=[0.8, 0.2])
    model = keras.Model(symbolic, layer(symbolic))
    assert layer.trainable_weights == []
    assert len(layer.non_trainable_weights) == 2
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.fit(inputs, inputs[0] * 0, epochs=2, verbose=0)
    np.testing.assert_allclose(layer.mixture_weights, [0.8, 0.2], atol=1e-6)
    assert float(to_numpy(layer.gamma)) == 1.0


def test_config_holds_every_argument():
    layer = WeightedAverage(
        simplex="gumbel_softmax",
        temperature=0.5,
        initial_weights=[0.25, 0.75],
        feature_axis=-1,
        scale=True,
        normalize_inputs=True,
        branch_dropout=0.2,
        mixture_regularizer="l2",
        seed=4,
        name="mix",
    )
    revived = WeightedAverage.from_config(layer.get_config())
    for name in (
        "temperature",
        "initial_weights",
        "feature_axis",
        "scale",
        "normalize_inputs",
        "branch_dropout",
        "seed",
        "name",
    ):
        assert getattr(revived, name) == getattr(layer, name), name
    assert isinstance(revived.simplex, simplex.GumbelSoftmax)
    assert revived.simplex.get_config() == layer.simplex.get_config()
    assert isinstance(revived.mixture_regularizer, keras.regularizers.L2)


# Bad input.


INVALID_ARGUMENTS = [
    (
        {"temperature": 0},
        ValueError,
        r"`temperature`.*positive.*Received: temperature=0",
    ),
    ({"temperature": -1.5}, ValueError, r"`temperature`.*temperature=-1.5"),
    ({"temperature": float("nan")}, ValueError, r"`temperature`.*temperature=nan"),
    ({"temperature": "hot"}, TypeError, r"`temperature`.*'hot'"),
    ({"temperature": 1e-40}, ValueError, r"`temperature`.*smallest normal"),
    (
        {"simplex": "sparsemax", "temperature": 2.0},
        ValueError,
        r"`temperature`.*no temperature",
    ),
    (
        {"simplex": "bogus"},
        ValueError,
        r"`simplex`.*softmax.*Received: simplex='bogus'",
    ),
    ({"simplex": 3}, TypeError, r"`simplex`.*Received: simplex=3"),
    (
        {"initial_weights": [0.5, 0.6]},
        ValueError,
        r"`initial_weights`.*sum to one.*\[0.5, 0.6\]",
    ),
    (
        {"initial_weights": [1.2, -0.2]},
        ValueError,
        r"`initial_weights`.*non-negative",
    ),
    ({"initial_weights": [1.0]}, ValueError, r"`initial_weights`.*N >= 2"),
    (
        {"initial_weights": [[0.5, 0.5]]},
        ValueError,
        r"`initial_weights`.*shape \(N,\)",
    ),
    ({"initial_weights": "half"}, TypeError, r"`initial_weights`.*'half'"),
    (
        {"initial_weights": [1.0, 0.0]},
        ValueError,
        r"`initial_weights`.*cannot produce",
    ),
    (
        {"feature_axis": 0},
        ValueError,
        r"`feature_axis`.*batch axis.*feature_axis=0",
    ),
    ({"feature_axis": 1.5}, TypeError, r"`feature_axis`.*feature_axis=1.5"),
    ({"branch_dropout": "0.1"}, TypeError, r"`branch_dropout`.*'0.1'"),
    (
        {"branch_dropout": 1.0},
        ValueError,
        r"`branch_dropout`.*\[0, 1\).*branch_dropout=1.0",
    ),
    (
        {"branch_dropout": -0.1},
        ValueError,
        r"`branch_dropout`.*branch_dropout=-0.1",
    ),
    ({"scale": "yes"}, TypeError, r"`scale`.*boolean.*scale='yes'"),
    ({"normalize_inputs": 1}, TypeError, r"`normalize_inputs`.*normalize_inputs=1"),
]


def test_invalid_arguments_are_named_in_the_error():
    for kwargs, error, match in INVALID_ARGUMENTS:
        with pytest.raises(error, match=match):
            WeightedAverage(**kwargs)


INVALID_INPUTS = [
    (
        [(3,), (3,), (3,)],
        {"initial_weights": [0.5, 0.5]},
        ValueError,
        r"`initial_weights`.*\(3,\).*Received: initial_weights=\[0.5, 0.5\]",
    ),
    (
        [(3,), (3,)],
        {"initial_weights": [[0.5] * 2] * 2, "feature_axis": -1},
        ValueError,
        r"`initial_weights`.*\(2, 3\)",
    ),
    (
        [(3,), (3,)],
        {"feature_axis": 2},
        ValueError,
        r"`feature_axis`.*\[-1, 1\].*feature_axis=2",
    ),
    (
        [(3,), (3,)],
        {"feature_axis": -2},
        ValueError,
        r"`feature_axis`.*feature_axis=-2",
    ),
    (
        [(None, 3), (None, 3)],
        {"feature_axis": 1},
        ValueError,
        r"`feature_axis`.*must be known",
    ),
    ([(3,), (4,)], {}, ValueError, r"broadcast.*axis 1 has sizes \[3, 4\]"),
    ([(3,)], {}, ValueError, r"at least 2 tensors.*1 input"),
]


def test_invalid_inputs_are_rejected_at_build():
    for shapes, kwargs, error, match in INVALID_INPUTS:
        layer = WeightedAverage(**kwargs)
        with pytest.raises(error, match=match):
            layer([keras.Input(shape=shape) for shape in shapes])


def test_single_tensor_is_rejected():
    layer = WeightedAverage()
    with pytest.raises(TypeError, match=r"list of at least 2 tensors.*not a list"):
        layer(keras.Input(shape=(3,)))
    layer([np.zeros((1, 3))] * 2)
    with pytest.raises(TypeError, match=r"list of 2 tensors.*not a list"):
        layer(np.zeros((1, 3)))


def test_different_batch_sizes_are_rejected():
    with pytest.raises(ValueError, match=r"same batch size"):
        WeightedAverage()([np.zeros((2, 3)), np.zeros((3, 3))])


def test_call_with_another_number_of_inputs_is_rejected():
    layer = WeightedAverage()
    layer([np.zeros((1, 3))] * 2)
    with pytest.raises(ValueError, match=r"built for 2 inputs and is now called on 3"):
        layer([np.zeros((1, 3))] * 3)
    with pytest.raises(ValueError, match=r"built for 2 inputs and is now called on 3"):
        layer([keras.Input(shape=(3,))] * 3)


def test_mixture_weights_before_build_is_an_error():
    with pytest.raises(
        ValueError, match=r"`mixture_weights`.*before the layer is built"
    ):
        _ = WeightedAverage().mixture_weights


# Documentation.


def test_docstring_examples_run():
    results = doctest.testmod(
        weighted_average_module,
        extraglobs={"np": np, "keras": keras, "keras_tether": keras_tether},
        optionflags=doctest.NORMALIZE_WHITESPACE,
    )
    assert results.attempted >= 10
    assert results.failed == 0
