"""Tests of `keras_tether.simplex` against independent NumPy references.

Softmax, ReLU normalization and Gumbel inference are checked against their
closed forms, sparsemax and 1.5-entmax against a slow bisection on the
threshold, and gradients against central finite differences of those float64
references.
"""

import functools
import json
import math

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_tether import simplex

# ---------------------------------------------------------------------------
# Independent float64 references
# ---------------------------------------------------------------------------


def reference_keep(mask, shape, axis):
    """The documented mask rule: a fully masked slice keeps every entry."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    keep = np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    return keep | ~keep.any(axis=axis, keepdims=True)


def masked_logits(logits, axis, mask):
    logits = np.asarray(logits, dtype=np.float64)
    return np.where(reference_keep(mask, logits.shape, axis), logits, -np.inf)


def softmax_reference(logits, axis=-1, temperature=1.0, mask=None):
    logits = masked_logits(logits, axis, mask) / temperature
    exponentials = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


def _bisect(values, mass, low, high):
    """The threshold t in [low, high] with mass(values, t) = 1 (mass decreasing)."""
    for _ in range(100):
        middle = (low + high) / 2
        too_much = mass(values, middle) > 1.0
        low = np.where(too_much, middle, low)
        high = np.where(too_much, high, middle)
    return (low + high) / 2


def sparsemax_reference(logits, axis=-1, mask=None):
    values = np.moveaxis(masked_logits(logits, axis, mask), axis, -1)
    top = values.max(axis=-1, keepdims=True)
    tau = _bisect(
        values,
        lambda v, t: np.maximum(v - t, 0.0).sum(axis=-1, keepdims=True),
        top - 1.0,
        top,
    )
    return np.moveaxis(np.maximum(values - tau, 0.0), -1, axis)


def entmax15_reference(logits, axis=-1, mask=None):
    values = np.moveaxis(masked_logits(logits, axis, mask), axis, -1) / 2.0
    top = values.max(axis=-1, keepdims=True)
    tau = _bisect(
        values,
        lambda v, t: (np.maximum(v - t, 0.0) ** 2).sum(axis=-1, keepdims=True),
        top - 1.0,
        top,
    )
    return np.moveaxis(np.maximum(values - tau, 0.0) ** 2, -1, axis)


def relu_normalized_reference(logits, axis=-1, epsilon=1e-4, mask=None):
    logits = np.asarray(logits, dtype=np.float64)
    keep = reference_keep(mask, logits.shape, axis)
    rectified = np.where(keep, np.maximum(logits, 0.0), 0.0)
    total = rectified.sum(axis=axis, keepdims=True)
    uniform = keep / keep.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, rectified / (epsilon + total), uniform)


def one_hot_argmax_reference(logits, axis=-1, mask=None):
    logits = masked_logits(logits, axis, mask)
    index = np.expand_dims(np.argmax(logits, axis=axis), axis)
    positions = np.arange(logits.shape[axis]).reshape(
        [-1 if d == axis % logits.ndim else 1 for d in range(logits.ndim)]
    )
    return (positions == index).astype(np.float64)


# Each map with non-default arguments, beside the reference of its inference
# output as a function of (logits, axis, mask).
MAPS = {
    "softmax": (
        simplex.Softmax(temperature=0.7),
        lambda z, axis, mask: softmax_reference(z, axis, 0.7, mask),
    ),
    "sparsemax": (simplex.Sparsemax(), sparsemax_reference),
    "entmax15": (simplex.Entmax15(), entmax15_reference),
    "relu_normalized": (
        simplex.ReluNormalized(epsilon=1e-3),
        lambda z, axis, mask: relu_normalized_reference(z, axis, 1e-3, mask),
    ),
    "gumbel_soft": (
        simplex.GumbelSoftmax(temperature=0.5, hard=False),
        lambda z, axis, mask: softmax_reference(z, axis, 0.5, mask),
    ),
    "gumbel_hard": (simplex.GumbelSoftmax(temperature=0.5), one_hot_argmax_reference),
}
# The maps whose weights sum to exactly 1 (up to rounding).
EXACT_MAPS = [name for name in MAPS if name != "relu_normalized"]


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_on_simplex(weights, axis, atol=1e-5):
    assert weights.dtype == np.float32
    assert np.all(np.isfinite(weights))
    assert np.all(weights >= 0.0)
    np.testing.assert_allclose(weights.sum(axis=axis), 1.0, atol=atol)


# ---------------------------------------------------------------------------
# Gradients on every backend, through the backend's own autodiff
# ---------------------------------------------------------------------------


def vector_jacobian_product(function, logits, cotangent):
    """d/dz sum(cotangent * function(z)) at z = logits, in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    cotangent = np.asarray(cotangent, dtype=np.float32)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def objective(z):
            return (function(z) * cotangent).sum()

        return np.asarray(jax.grad(objective)(jax.numpy.asarray(logits)))
    if backend == "tensorflow":
        import tensorflow as tf

        z = tf.constant(logits)
        with tf.GradientTape() as tape:
            tape.watch(z)
            objective = tf.reduce_sum(function(z) * cotangent)
        return tape.gradient(objective, z).numpy()
    if backend == "torch":
        import torch

        z = torch.tensor(logits, requires_grad=True)
        (function(z) * torch.as_tensor(cotangent)).sum().backward()
        return z.grad.numpy()
    raise NotImplementedError(f"No gradient helper for backend {backend!r}")


def finite_difference_vjp(reference, logits, cotangent, step=1e-6):
    """Central finite differences of a float64 reference, contracted with cotangent."""
    logits = np.asarray(logits, dtype=np.float64)
    gradient = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        shift = np.zeros_like(logits)
        shift[index] = step
        difference = reference(logits + shift) - reference(logits - shift)
        gradient[index] = (cotangent * difference).sum() / (2 * step)
    return gradient


# ---------------------------------------------------------------------------
# Known values
# ---------------------------------------------------------------------------


def test_sparsemax_hand_worked_values():
    logits = np.array(
        [
            [1.0, 0.8, -1.0, -3.0],
            [0.25, 0.0, -2.0, -2.0],
            [3.0, 1.0, 1.0, 0.0],
            [2.0, 2.0, 2.0, 2.0],
            [0.5, 0.3, 0.1, -5.0],  # tau = -1/30
        ]
    )
    expected = [
        [0.6, 0.4, 0.0, 0.0],
        [0.625, 0.375, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.25, 0.25, 0.25, 0.25],
        [8 / 15, 5 / 15, 2 / 15, 0.0],
    ]
    np.testing.assert_allclose(to_numpy(simplex.sparsemax(logits)), expected, atol=1e-6)


def test_entmax15_hand_worked_values():
    # Half-logits [0.5, 0, -1.5, -2]: the two largest share the support, so
    # (0.5 - tau)^2 + tau^2 = 1, whose smaller root is tau = 0.25 - sqrt(7/16).
    root = math.sqrt(7 / 16)
    weights = to_numpy(simplex.entmax15(np.array([1.0, 0.0, -3.0, -4.0])))
    np.testing.assert_allclose(
        weights, [(0.25 + root) ** 2, (root - 0.25) ** 2, 0.0, 0.0], atol=1e-6
    )
    # At the edge of the support: half-logits [1, 0, ...] give tau = 0 exactly.
    np.testing.assert_allclose(
        to_numpy(simplex.entmax15([2.0, 0.0, 0.0, -1.0])), [1.0, 0.0, 0.0, 0.0]
    )
    np.testing.assert_allclose(to_numpy(simplex.entmax15([1.0] * 4)), [0.25] * 4)


def test_entmax15_lies_between_softmax_and_sparsemax():
    logits = np.array([1.0, 0.5, 0.0, -0.6])
    softmax_zeros = np.sum(to_numpy(simplex.softmax(logits)) == 0)
    entmax_zeros = np.sum(to_numpy(simplex.entmax15(logits)) == 0)
    sparsemax_zeros = np.sum(to_numpy(simplex.sparsemax(logits)) == 0)
    assert softmax_zeros < entmax_zeros < sparsemax_zeros


def test_softmax_temperature_known_values():
    weights = to_numpy(
        simplex.softmax(np.array([1.0, 0.0, -1.0, -2.0]), temperature=0.5)
    )
    expected = np.exp([2.0, 0.0, -2.0, -4.0]) / np.exp([2.0, 0.0, -2.0, -4.0]).sum()
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_relu_normalized_known_values():
    logits = np.array([3.0, 1.0, -2.0, 0.0])
    np.testing.assert_allclose(
        to_numpy(simplex.relu_normalized(logits, epsilon=0.0)), [0.75, 0.25, 0.0, 0.0]
    )
    # Not renormalized, as in EfficientDet: the sum is 4 / (4 + epsilon).
    weights = to_numpy(simplex.relu_normalized(logits, epsilon=0.5))
    np.testing.assert_allclose(weights, [3 / 4.5, 1 / 4.5, 0.0, 0.0], rtol=1e-6)


def test_relu_normalized_returns_uniform_weights_when_all_are_zero():
    logits = np.array([[-1.0, -2.0, 0.0, -3.0], [1.0, -1.0, -1.0, -1.0]])
    weights = to_numpy(simplex.relu_normalized(logits, epsilon=0.0))
    np.testing.assert_allclose(weights, [[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])


def test_gumbel_softmax_inference_is_deterministic():
    logits = np.array([[0.5, 2.0, 1.0, -1.0], [3.0, -1.0, 3.0, 0.0]])
    hard = to_numpy(simplex.gumbel_softmax(logits, training=False))
    np.testing.assert_array_equal(hard, [[0, 1, 0, 0], [1, 0, 0, 0]])
    # -0.0 equals 0.0, so the tie goes to the first entry on every backend.
    signed_zeros = np.array([-1.0, -0.0, 0.0, -2.0], dtype=np.float32)
    tie = to_numpy(simplex.gumbel_softmax(signed_zeros))
    np.testing.assert_array_equal(tie, [0, 1, 0, 0])
    soft = to_numpy(simplex.gumbel_softmax(logits, temperature=2.0, hard=False))
    np.testing.assert_allclose(
        soft, softmax_reference(logits, temperature=2.0), rtol=1e-6
    )


def test_map_objects_match_reference_on_a_batch():
    logits = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for name, (simplex_map, reference) in MAPS.items():
        for axis in (0, 1, 2):
            weights = to_numpy(simplex_map(logits, axis=axis))
            expected = reference(logits, axis, None)
            np.testing.assert_allclose(weights, expected, atol=2e-6, err_msg=name)


def test_functions_match_their_map_objects_defaults():
    logits = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    references = {
        simplex.softmax: softmax_reference(logits),
        simplex.sparsemax: sparsemax_reference(logits),
        simplex.entmax15: entmax15_reference(logits),
        simplex.relu_normalized: relu_normalized_reference(logits),
        simplex.gumbel_softmax: one_hot_argmax_reference(logits),
    }
    for function, expected in references.items():
        np.testing.assert_allclose(to_numpy(function(logits)), expected, atol=2e-6)


# ---------------------------------------------------------------------------
# Properties over random logits
# ---------------------------------------------------------------------------


# JAX compiles each operation anew for every shape and axis, so the random
# logits take a few fixed shapes (ranks 1 to 3, a single entry) and random axes.
SHAPES = [(1,), (4,), (2, 4), (2, 3, 4)]


@st.composite
def logits_and_axis(draw):
    shape = draw(st.sampled_from(SHAPES))
    bound = float(np.float32(draw(st.sampled_from([1e-3, 3.0, 1e4]))))
    # XLA flushes subnormal floats to zero, so they are left out: a subnormal
    # ReLU logit counts as positive in NumPy and as zero under JAX.
    elements = st.floats(-bound, bound, width=32, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, shape, elements=elements))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return logits, axis


@pytest.mark.parametrize("name", MAPS)
@given(case=logits_and_axis(), data=st.data())
def test_maps_land_on_the_simplex_and_match_reference(name, case, data):
    logits, axis = case
    mask = data.draw(hnp.arrays(np.bool_, logits.shape))
    simplex_map, reference = MAPS[name]
    for slice_mask in (None, mask):
        weights = to_numpy(simplex_map(logits, axis=axis, mask=slice_mask))
        assert weights.shape == logits.shape
        expected = reference(logits, axis, slice_mask)
        np.testing.assert_allclose(weights, expected, atol=2e-5)
        if name in EXACT_MAPS:
            assert_on_simplex(weights, axis)
        else:
            assert np.all(weights >= 0.0)
            assert np.all(weights.sum(axis=axis) <= 1.0 + 1e-6)
    keep = reference_keep(mask, logits.shape, axis)
    assert np.all(weights[~keep] == 0.0)


@given(case=logits_and_axis(), epsilon=st.sampled_from([0.0, 1e-4, 0.1]))
def test_relu_normalized_follows_its_documented_rule(case, epsilon):
    logits, axis = case
    weights = to_numpy(simplex.relu_normalized(logits, axis=axis, epsilon=epsilon))
    assert weights.dtype == np.float32
    assert np.all(weights >= 0.0)
    assert np.all(weights.sum(axis=axis) <= 1.0 + 1e-6)
    expected = relu_normalized_reference(logits, axis, epsilon)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)


@given(case=logits_and_axis(), hard=st.booleans(), seed=st.integers(0, 2**16))
def test_gumbel_training_samples_land_on_the_simplex(case, hard, seed):
    logits, axis = case
    weights = to_numpy(
        simplex.gumbel_softmax(logits, axis=axis, hard=hard, training=True, seed=seed)
    )
    assert_on_simplex(weights, axis)
    if hard:
        assert np.all((weights == 0.0) | (weights == 1.0))
        np.testing.assert_array_equal(weights.sum(axis=axis), 1.0)


# ---------------------------------------------------------------------------
# Masks, dtypes and extreme inputs
# ---------------------------------------------------------------------------


def test_fully_masked_slice_behaves_as_unmasked():
    logits = np.array([[0.3, 1.2, -0.4, 0.9], [2.0, 0.1, 0.5, -1.0]], dtype=np.float32)
    mask = np.array([[False] * 4, [False, True, True, True]])
    for name, (simplex_map, _) in MAPS.items():
        masked = to_numpy(simplex_map(logits, mask=mask))
        unmasked = to_numpy(simplex_map(logits))
        np.testing.assert_array_equal(masked[0], unmasked[0], err_msg=name)
        assert masked[1, 0] == 0.0, name
        assert not np.array_equal(masked[1], unmasked[1]), name


def test_mask_broadcasts_against_logits():
    logits = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    mask = np.array([[True, False, True, True]])
    for name, (simplex_map, reference) in MAPS.items():
        weights = to_numpy(simplex_map(logits, mask=mask))
        np.testing.assert_array_equal(weights[:, 1], 0.0, err_msg=name)
        expected = reference(logits, -1, mask)
        np.testing.assert_allclose(weights, expected, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_give_float32_weights(dtype):
    logits = keras.ops.cast(
        np.array([[1e4, -1e4, 0.0, 9.0e3], [0.5, 0.25, 0.0, -0.5]]), dtype
    )
    as_float32 = to_numpy(keras.ops.cast(logits, "float32"))
    for name, (simplex_map, reference) in MAPS.items():
        weights = to_numpy(simplex_map(logits))
        assert weights.dtype == np.float32, name
        expected = reference(as_float32, -1, None)
        np.testing.assert_allclose(weights, expected, atol=2e-5, err_msg=name)
        if name in EXACT_MAPS:
            assert_on_simplex(weights, -1)


def test_extreme_logits_stay_finite():
    logits = np.array(
        [[1e4, -1e4, 1e4 - 0.5, 0.0], [-1e4, -1e4, -1e4, 1e4]], dtype=np.float32
    )
    mask = np.array([[False, True, True, True], [True, True, True, False]])
    for name in EXACT_MAPS:
        simplex_map, reference = MAPS[name]
        for axis in (0, 1):
            for slice_mask in (None, mask):
                weights = to_numpy(simplex_map(logits, axis=axis, mask=slice_mask))
                assert_on_simplex(weights, axis)
                expected = reference(logits, axis, slice_mask)
                np.testing.assert_allclose(weights, expected, atol=1e-6, err_msg=name)


def test_tiny_temperature_stays_finite():
    logits = np.array([[1e4, -1e4, 3.0, 0.0], [0.1, 0.2, 0.3, 0.0]], dtype=np.float32)
    for hard in (True, False):
        for training in (True, False):
            weights = simplex.gumbel_softmax(
                logits, temperature=1e-4, hard=hard, training=training, seed=3
            )
            assert_on_simplex(to_numpy(weights), -1)
    sharp = to_numpy(simplex.softmax(logits, temperature=1e-4))
    np.testing.assert_allclose(sharp, [[1, 0, 0, 0], [0, 0, 1, 0]], atol=1e-6)


def test_negative_infinite_logits_get_zero_weight_and_finite_gradient():
    logits = np.array([1.0, -np.inf, 0.5, 0.0], dtype=np.float32)
    for name in ("softmax", "sparsemax", "entmax15", "relu_normalized"):
        simplex_map, reference = MAPS[name]
        weights = to_numpy(simplex_map(logits))
        expected = reference(logits[[0, 2, 3]], -1, None)
        np.testing.assert_allclose(weights[[0, 2, 3]], expected, atol=1e-6)
        assert weights[1] == 0.0, name
        gradient = vector_jacobian_product(simplex_map, logits, [1.0, 2.0, 3.0, 4.0])
        assert np.all(np.isfinite(gradient)), name


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

# Logits whose weights are all well away from the edge of the support, so that
# finite differences do not cross it.
GRADIENT_CASES = [
    (np.array([0.9, 0.5, 0.1, -1.5]), -1),
    (np.array([[0.3, -0.2, 1.0, 0.1], [1.1, 0.7, 0.4, 0.6]]), 0),
    (np.array([0.5, 0.5, 0.5, 0.5]), -1),
]

REFERENCES_FOR_GRADIENTS = {
    "softmax": (simplex.Softmax(temperature=0.7), MAPS["softmax"][1]),
    "sparsemax": (simplex.Sparsemax(), sparsemax_reference),
    "entmax15": (simplex.Entmax15(), entmax15_reference),
    "relu_normalized": (
        simplex.ReluNormalized(epsilon=1e-3),
        MAPS["relu_normalized"][1],
    ),
}


def _support_is_stable(weights_reference, logits, axis):
    """Whether moving any logit by 1e-3 leaves the support of the weights unchanged."""
    weights = weights_reference(logits, axis, None)
    step = 1e-3
    changed = np.zeros(logits.shape, dtype=bool)
    for index in np.ndindex(logits.shape):
        for sign in (-1, 1):
            moved = logits.copy()
            moved[index] += sign * step
            moved_weights = weights_reference(moved, axis, None)
            changed |= (moved_weights > 0) != (weights > 0)
    return not changed.any()


@pytest.mark.parametrize("name", REFERENCES_FOR_GRADIENTS)
def test_gradient_matches_finite_differences(name):
    simplex_map, reference = REFERENCES_FOR_GRADIENTS[name]
    for case, (logits, axis) in enumerate(GRADIENT_CASES):
        if name == "relu_normalized":
            logits = np.abs(logits) + 0.1
        assert _support_is_stable(reference, logits, axis)
        cotangent = np.random.default_rng(case).normal(size=logits.shape)
        gradient = vector_jacobian_product(
            lambda z, axis=axis: simplex_map(z, axis=axis), logits, cotangent
        )
        expected = finite_difference_vjp(
            lambda z, axis=axis: reference(z, axis, None), logits, cotangent
        )
        np.testing.assert_allclose(gradient, expected, atol=1e-4, err_msg=f"{case}")
        # A gradient that is identically zero would pass trivially at ties.
        assert np.abs(expected).max() > 1e-2


@pytest.mark.parametrize("name", REFERENCES_FOR_GRADIENTS)
def test_masked_gradient_matches_gradient_of_kept_entries(name):
    simplex_map, reference = REFERENCES_FOR_GRADIENTS[name]
    logits = np.array([0.9, 3.0, 0.5, 0.6])
    mask = np.array([True, False, True, True])
    cotangent = np.array([1.0, -2.0, 0.5, -1.5])
    gradient = vector_jacobian_product(
        lambda z: simplex_map(z, mask=mask), logits, cotangent
    )
    expected = finite_difference_vjp(
        lambda z: reference(z, -1, None), logits[mask], cotangent[mask]
    )
    assert gradient[1] == 0.0
    np.testing.assert_allclose(gradient[mask], expected, atol=1e-4)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_gradient_is_finite_at_ties_and_support_edges(name):
    simplex_map = REFERENCES_FOR_GRADIENTS[name][0]
    cases = [
        [1.0, 1.0, 1.0, 1.0],  # ties inside the support
        [1.0, 0.0, 0.0, -1.0],  # sparsemax support edge: tau = 0 = z_2 = z_3
        [2.0, 0.0, 0.0, -1.0],  # entmax15 support edge
        [5.0, 5.0, -3.0, -3.0],  # ties at the top and outside the support
        [1e4, -1e4, 1e4, 0.0],  # extreme
    ]
    for logits in np.array(cases, dtype=np.float32):
        gradient = vector_jacobian_product(simplex_map, logits, [1.0, -2.0, 3.0, 0.5])
        assert np.all(np.isfinite(gradient)), logits
        # Both maps are invariant to adding a constant to every logit.
        np.testing.assert_allclose(gradient.sum(), 0.0, atol=1e-5)
        weights = to_numpy(simplex_map(logits))
        np.testing.assert_array_equal(gradient[weights == 0], 0.0)


def test_entmax15_gradient_at_ties_is_analytic():
    # At four equal logits every weight is 1/4 and sqrt(w) = g = 1/2, so the
    # Jacobian diag(g) - g g^T / sum(g) is (I - 1 1^T / 4) / 2.
    cotangent = np.array([1.0, -2.0, 4.0, 0.5])
    expected = (cotangent - cotangent.mean()) / 2
    gradient = vector_jacobian_product(simplex.entmax15, [1.0] * 4, cotangent)
    np.testing.assert_allclose(gradient, expected, atol=1e-6)


def test_relu_normalized_gradient_is_zero_but_finite_when_all_are_zero():
    for epsilon in (0.0, 1e-4):
        gradient = vector_jacobian_product(
            lambda z, eps=epsilon: simplex.relu_normalized(z, epsilon=eps),
            [-1.0, -0.5, -2.0, 0.0],
            [1.0, 2.0, 3.0, 4.0],
        )
        np.testing.assert_array_equal(gradient, 0.0)


# ---------------------------------------------------------------------------
# Gumbel-softmax sampling
# ---------------------------------------------------------------------------


def test_gumbel_hard_forward_is_one_hot_of_the_relaxed_sample():
    logits = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    hard = to_numpy(
        simplex.gumbel_softmax(logits, temperature=0.5, training=True, seed=11)
    )
    soft = to_numpy(
        simplex.gumbel_softmax(
            logits, temperature=0.5, hard=False, training=True, seed=11
        )
    )
    np.testing.assert_array_equal(hard, one_hot_argmax_reference(soft))
    assert not np.allclose(soft, hard)


def test_gumbel_straight_through_gradient_is_the_relaxed_softmax_gradient():
    logits = np.array([0.3, -0.2, 1.1, 0.4], dtype=np.float32)
    temperature = 0.8
    cotangent = np.array([1.0, -2.0, 0.5, 3.0])
    soft = to_numpy(
        simplex.gumbel_softmax(
            logits, temperature=temperature, hard=False, training=True, seed=5
        )
    ).astype(np.float64)
    # y = softmax((z + g) / T) has Jacobian (diag(y) - y y^T) / T.
    jacobian = (np.diag(soft) - np.outer(soft, soft)) / temperature
    gradient = vector_jacobian_product(
        lambda z: simplex.gumbel_softmax(
            z, temperature=temperature, training=True, seed=5
        ),
        logits,
        cotangent,
    )
    np.testing.assert_allclose(gradient, cotangent @ jacobian, atol=1e-5)
    assert np.abs(gradient).max() > 1e-2


# Every sampling test draws this many one-hot vectors of length 4, so that JAX
# compiles the sampler once; the standard error of a frequency is below 0.0036.
DRAWS = 20000


def test_gumbel_samples_follow_the_softmax_of_the_logits():
    # Gumbel-max trick: argmax(z + g) is distributed as softmax(z), whatever T.
    logits = np.array([1.0, 0.0, -0.5, 0.7], dtype=np.float32)
    samples = to_numpy(
        simplex.gumbel_softmax(
            np.tile(logits, (DRAWS, 1)), temperature=3.0, training=True, seed=21
        )
    )
    np.testing.assert_allclose(
        samples.mean(axis=0), softmax_reference(logits), atol=0.015
    )


def test_gumbel_seeds():
    logits = np.zeros((2, 4), dtype=np.float32)

    def sample(seed):
        return to_numpy(
            simplex.gumbel_softmax(logits, hard=False, training=True, seed=seed)
        )

    first, again, other = sample(9), sample(9), sample(10)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    generator = keras.random.SeedGenerator(9)
    fresh = [sample(generator) for _ in range(2)]
    assert not np.array_equal(fresh[0], fresh[1])


def test_gumbel_never_samples_masked_entries():
    logits = np.tile(np.array([5.0, 0.0, 0.0, 0.0], dtype=np.float32), (DRAWS, 1))
    mask = np.array([False, True, True, True])
    samples = to_numpy(simplex.gumbel_softmax(logits, training=True, seed=4, mask=mask))
    np.testing.assert_array_equal(samples[:, 0], 0.0)
    np.testing.assert_allclose(samples[:, 1:].mean(axis=0), 1 / 3, atol=0.015)


# ---------------------------------------------------------------------------
# Inverse
# ---------------------------------------------------------------------------

POSITIVE_WEIGHTS = [
    (np.array([0.4, 0.3, 0.2, 0.1]), -1),
    (np.array([[0.5, 0.1, 0.3, 0.9], [0.5, 0.9, 0.7, 0.1]]), 0),
    (np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]), 1),
]
WEIGHTS_WITH_ZEROS = [
    (np.array([0.6, 0.0, 0.4, 0.0]), -1),
    (np.array([[0.0, 1.0, 0.5, 1.0], [1.0, 0.0, 0.5, 0.0]]), 0),
]
ALL_WEIGHTS = POSITIVE_WEIGHTS + WEIGHTS_WITH_ZEROS


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "entmax15", "gumbel_soft"])
def test_inverse_round_trip(name):
    simplex_map, _ = MAPS[name]
    # Softmax never outputs zeros, so only positive weights can come back.
    cases = POSITIVE_WEIGHTS if name in ("softmax", "gumbel_soft") else ALL_WEIGHTS
    for weights, axis in cases:
        logits = simplex_map.inverse(weights, axis=axis)
        assert logits.dtype == np.float32 and logits.shape == weights.shape
        output = to_numpy(simplex_map(logits, axis=axis))
        np.testing.assert_allclose(output, weights, atol=1e-6)


def test_inverse_accepts_tensors():
    weights = keras.ops.convert_to_tensor([0.5, 0.25, 0.25, 0.0])
    np.testing.assert_allclose(
        simplex.Entmax15().inverse(weights), [math.sqrt(2), 1.0, 1.0, 0.0], rtol=1e-6
    )


def test_relu_normalized_inverse_round_trip_within_epsilon():
    simplex_map = simplex.ReluNormalized(epsilon=1e-2)
    for weights, axis in ALL_WEIGHTS:
        logits = simplex_map.inverse(weights, axis=axis)
        length = weights.shape[axis]
        np.testing.assert_allclose(logits, weights * length, rtol=1e-6)
        output = to_numpy(simplex_map(logits, axis=axis))
        expected = weights * length / (length + 1e-2)
        np.testing.assert_allclose(output, expected, rtol=1e-6)


def test_relu_normalized_inverse_of_uniform_weights_is_efficientdet_init():
    logits = simplex.ReluNormalized().inverse(np.full(4, 0.25))
    np.testing.assert_allclose(logits, np.ones(4), rtol=1e-6)


def test_hard_gumbel_inverse_picks_the_largest_weight_at_inference():
    simplex_map = simplex.GumbelSoftmax(temperature=0.3)
    for weights, axis in ALL_WEIGHTS:
        logits = simplex_map.inverse(weights, axis=axis)
        assert np.all(np.isfinite(logits))
        inference = to_numpy(simplex_map(logits, axis=axis))
        expected = one_hot_argmax_reference(weights, axis)
        np.testing.assert_array_equal(inference, expected)


@pytest.mark.parametrize("weights", [POSITIVE_WEIGHTS[0][0], WEIGHTS_WITH_ZEROS[0][0]])
def test_hard_gumbel_inverse_samples_with_the_given_weights(weights):
    simplex_map = simplex.GumbelSoftmax(temperature=0.3)
    logits = np.tile(simplex_map.inverse(weights), (DRAWS, 1))
    samples = to_numpy(simplex_map(logits, training=True, seed=8))
    frequencies = samples.mean(axis=0)
    np.testing.assert_allclose(frequencies, weights, atol=0.015)
    np.testing.assert_array_equal(frequencies[weights == 0], 0.0)


@pytest.mark.parametrize("name", ["softmax", "gumbel_soft"])
def test_inverse_rejects_zeros_the_map_cannot_produce(name):
    simplex_map, _ = MAPS[name]
    with pytest.raises(ValueError, match=r"`weights`.*positive.*Received: weights="):
        simplex_map.inverse([0.5, 0.5, 0.0])


@pytest.mark.parametrize(
    "weights",
    [[0.5, 0.6], [1.2, -0.2], [np.nan, 1.0], [0.2, 0.2]],
)
def test_inverse_rejects_weights_off_the_simplex(weights):
    for simplex_map, _ in MAPS.values():
        with pytest.raises(
            ValueError, match=r"`weights`.*sum to 1.*Received: weights=\["
        ):
            simplex_map.inverse(weights)


def test_inverse_rejects_scalars_and_bad_axes():
    with pytest.raises(ValueError, match=r"`weights`.*Received: weights=1"):
        simplex.Sparsemax().inverse(1.0)
    with pytest.raises(ValueError, match=r"`axis`.*Received: axis=2"):
        simplex.Sparsemax().inverse([0.5, 0.5], axis=2)
    with pytest.raises(TypeError, match=r"`axis`.*Received: axis=0.5"):
        simplex.Sparsemax().inverse([0.5, 0.5], axis=0.5)


# ---------------------------------------------------------------------------
# Look-up and serialization
# ---------------------------------------------------------------------------

ALL_MAPS = [
    simplex.Softmax(),
    simplex.Softmax(temperature=0.25),
    simplex.Sparsemax(),
    simplex.Entmax15(),
    simplex.ReluNormalized(),
    simplex.ReluNormalized(epsilon=0.0),
    simplex.GumbelSoftmax(),
    simplex.GumbelSoftmax(temperature=2.0, hard=False),
]


def test_serialization_round_trips():
    for simplex_map in ALL_MAPS:
        config = simplex.serialize(simplex_map)
        assert json.loads(json.dumps(config)) == config
        assert simplex.deserialize(config) == simplex_map
        assert simplex.get(config) == simplex_map
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(simplex_map)
        )
        assert type(restored) is type(simplex_map)
        assert restored.get_config() == simplex_map.get_config()
        assert type(simplex_map).from_config(simplex_map.get_config()) == simplex_map


def test_deserialize_accepts_a_bare_class_name():
    config = {"class_name": "GumbelSoftmax", "config": {"temperature": 0.5}}
    assert simplex.deserialize(config) == simplex.GumbelSoftmax(temperature=0.5)


def test_get_by_name():
    cases = [
        ("softmax", simplex.Softmax()),
        ("SPARSEMAX", simplex.Sparsemax()),
        ("Entmax15", simplex.Entmax15()),
        ("relu_normalized", simplex.ReluNormalized()),
        ("gumbel_softmax", simplex.GumbelSoftmax()),
        (None, simplex.Softmax()),
    ]
    for identifier, expected in cases:
        simplex_map = simplex.get(identifier)
        assert type(simplex_map) is type(expected)
        assert simplex_map == expected


def test_get_returns_instances_as_is():
    simplex_map = simplex.Softmax(temperature=3.0)
    assert simplex.get(simplex_map) is simplex_map


def test_names_are_the_get_names():
    names = {type(m).name for m in ALL_MAPS}
    assert names == {
        "softmax",
        "sparsemax",
        "entmax15",
        "relu_normalized",
        "gumbel_softmax",
    }
    for name in names:
        assert simplex.get(name).name == name


def test_equality_repr_and_hash():
    assert simplex.Softmax(0.5) == simplex.Softmax(temperature=0.5)
    assert simplex.Softmax(0.5) != simplex.Softmax(1.0)
    assert simplex.Sparsemax() != simplex.Entmax15()
    assert simplex.Sparsemax() != "sparsemax"
    assert len({simplex.Softmax(0.5), simplex.Softmax(0.5), simplex.Sparsemax()}) == 2
    assert repr(simplex.GumbelSoftmax(0.5, hard=False)) == (
        "GumbelSoftmax(temperature=0.5, hard=False)"
    )
    assert repr(simplex.Entmax15()) == "Entmax15()"


def test_get_rejects_unknown_names():
    with pytest.raises(
        ValueError, match=r"`simplex`.*'entmax15'.*Received: simplex='entmax'"
    ):
        simplex.get("entmax")


def test_get_rejects_other_types():
    with pytest.raises(TypeError, match=r"`simplex`.*Received: simplex=3 of type int"):
        simplex.get(3)


def test_serialize_and_deserialize_reject_other_objects():
    with pytest.raises(
        TypeError, match=r"`simplex_map`.*Received: simplex_map='softmax'"
    ):
        simplex.serialize("softmax")
    with pytest.raises(TypeError, match=r"`config`.*Received: config=\['softmax'\]"):
        simplex.deserialize(["softmax"])
    dense_config = keras.saving.serialize_keras_object(keras.layers.Dense(2))
    with pytest.raises(ValueError, match=r"`config`.*`SimplexMap`"):
        simplex.deserialize(dense_config)


def test_public_api_is_explicit():
    expected = {
        "SimplexMap",
        "Softmax",
        "Sparsemax",
        "Entmax15",
        "ReluNormalized",
        "GumbelSoftmax",
        "softmax",
        "sparsemax",
        "entmax15",
        "relu_normalized",
        "gumbel_softmax",
        "get",
        "serialize",
        "deserialize",
    }
    assert set(simplex.__all__) == expected
    for name in expected:
        assert getattr(simplex, name) is not None


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------


def test_temperature_must_be_positive():
    for value in (0, -1.5, float("inf"), float("nan")):
        message = (
            r"Received an invalid value for `temperature`, expected a positive "
            rf"number\. Received: temperature={value}"
        )
        for build in (
            simplex.Softmax,
            simplex.GumbelSoftmax,
            functools.partial(simplex.softmax, [1.0, 2.0]),
            functools.partial(simplex.gumbel_softmax, [1.0, 2.0]),
        ):
            with pytest.raises(ValueError, match=message):
                build(temperature=value)


def test_temperature_must_be_a_number():
    for value, shown in (("hot", "'hot'"), (None, "None"), (True, "True")):
        message = rf"`temperature`.*Received: temperature={shown} of type"
        with pytest.raises(TypeError, match=message):
            simplex.Softmax(temperature=value)
        with pytest.raises(TypeError, match=message):
            simplex.gumbel_softmax([1.0, 2.0], temperature=value)


def test_temperature_accepts_numpy_numbers_and_stores_floats():
    simplex_map = simplex.Softmax(temperature=np.float32(0.5))
    assert type(simplex_map.temperature) is float
    assert simplex_map.get_config() == {"temperature": 0.5}


def test_epsilon_must_be_non_negative():
    for value in (-1, float("inf"), float("nan")):
        message = (
            r"Received an invalid value for `epsilon`, expected a non-negative "
            rf"number\. Received: epsilon={value}"
        )
        with pytest.raises(ValueError, match=message):
            simplex.ReluNormalized(epsilon=value)
        with pytest.raises(ValueError, match=message):
            simplex.relu_normalized([1.0, 2.0], epsilon=value)


def test_epsilon_must_be_a_number():
    with pytest.raises(TypeError, match=r"`epsilon`.*Received: epsilon='small'"):
        simplex.ReluNormalized(epsilon="small")


def test_hard_must_be_a_boolean():
    with pytest.raises(TypeError, match=r"`hard`.*Received: hard='yes' of type str"):
        simplex.GumbelSoftmax(hard="yes")
    with pytest.raises(TypeError, match=r"`hard`.*Received: hard=1 of type int"):
        simplex.gumbel_softmax([1.0, 2.0], hard=1)


def test_axis_must_be_an_integer():
    for simplex_map, _ in MAPS.values():
        with pytest.raises(
            TypeError, match=r"`axis`.*Received: axis=1.0 of type float"
        ):
            simplex_map([1.0, 2.0], axis=1.0)


# ---------------------------------------------------------------------------
# Inside a model: compiled training and inference on each backend
# ---------------------------------------------------------------------------


class _Mixture(keras.layers.Layer):
    """Mixes the last axis of its input with weights from a simplex map."""

    def __init__(self, simplex_map, **kwargs):
        super().__init__(**kwargs)
        self.simplex_map = simplex_map
        self.seed_generator = keras.random.SeedGenerator(0)

    def build(self, input_shape):
        initial = self.simplex_map.inverse(np.array([0.4, 0.3, 0.2, 0.1]))
        self.logits = self.add_weight(
            shape=(4,), initializer=keras.initializers.Constant(initial)
        )

    def call(self, inputs, training=False):
        weights = self.simplex_map(
            self.logits, training=training, seed=self.seed_generator
        )
        return keras.ops.sum(inputs * weights, axis=-1, keepdims=True)


@pytest.mark.parametrize("name", MAPS)
def test_maps_train_inside_a_compiled_model(name):
    simplex_map, reference = MAPS[name]
    model = keras.Sequential([keras.Input((4,)), _Mixture(simplex_map)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    inputs = np.random.default_rng(4).normal(size=(16, 4)).astype(np.float32)
    targets = inputs[:, :1]
    before = to_numpy(model.layers[0].logits).copy()
    model.fit(inputs, targets, epochs=2, batch_size=8, verbose=0)
    after = to_numpy(model.layers[0].logits)
    assert np.all(np.isfinite(after))
    assert not np.allclose(before, after)
    predictions = model.predict(inputs, verbose=0)
    expected = inputs @ reference(after, -1, None).T
    np.testing.assert_allclose(predictions[:, 0], expected, atol=1e-5)


NON_FINITE_MAPS = ["softmax", "sparsemax", "entmax15", "relu_normalized"]


@pytest.mark.parametrize("name", NON_FINITE_MAPS + ["gumbel_softmax"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_plus_inf_makes_the_whole_slice_nan(name, bad):
    logits = np.array([[bad, 0.5, -1.0], [1.0, 0.5, -1.0]], "float32")
    weights = keras.ops.convert_to_numpy(getattr(simplex, name)(logits))
    assert np.all(np.isnan(weights[0])), weights
    assert np.all(np.isfinite(weights[1])) and np.isclose(weights[1].sum(), 1, 1e-3)


@pytest.mark.parametrize("name", NON_FINITE_MAPS)
def test_minus_inf_gets_weight_zero_and_the_rest_is_unchanged(name):
    fn = getattr(simplex, name)
    with_minus_inf = np.array([[-np.inf, 1.0, 0.2, -0.3]], "float32")
    weights = keras.ops.convert_to_numpy(fn(with_minus_inf))
    rest = keras.ops.convert_to_numpy(fn(with_minus_inf[:, 1:]))
    assert weights[0, 0] == 0.0
    np.testing.assert_allclose(weights[:, 1:], rest, rtol=1e-6, atol=1e-7)
    all_minus_inf = np.full((1, 3), -np.inf, "float32")
    assert np.all(np.isnan(keras.ops.convert_to_numpy(fn(all_minus_inf))))


@pytest.mark.parametrize("temperature", [1e-38, 1e-45, 0.0])
def test_temperatures_that_act_as_zero_are_refused(temperature):
    with pytest.raises(ValueError, match=r"`temperature`.*temperature="):
        simplex.softmax(np.ones(3, "float32"), temperature=temperature)
    with pytest.raises(ValueError, match=r"`temperature`"):
        simplex.Softmax(temperature=temperature)


def test_the_smallest_allowed_temperature_gives_a_one_hot_argmax():
    logits = np.array([[0.3, 1.0, 0.99999]], "float32")
    weights = simplex.softmax(logits, temperature=float(np.finfo(np.float32).tiny))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), [[0, 1, 0]])
