"""The parametrizations themselves: values, inverses, samples, gradients, configs.

Every value is checked against a NumPy float64 formula written here, and every
gradient against central finite differences of that formula.
"""

import keras
import numpy as np
import pytest

from keras_tether import parametrize

to_numpy = keras.ops.convert_to_numpy


def _gradient(fn, x, cotangent):
    """d/dx sum(fn(x) * cotangent) with the active backend's autodiff."""
    backend = keras.backend.backend()
    x = np.asarray(x, dtype="float32")
    cotangent = np.asarray(cotangent, dtype="float32")
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (fn(v) * cotangent).sum())(x))
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fn(variable) * cotangent)
        return tape.gradient(loss, variable).numpy()
    import torch

    tensor = torch.tensor(x, requires_grad=True)
    (fn(tensor) * torch.tensor(cotangent)).sum().backward()
    return tensor.grad.numpy()


def _finite_differences(reference, x, cotangent, step=1e-6):
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = ((reference(up) - reference(down)) * cotangent).sum() / (2 * step)
    return grad


def _softplus(x):
    return np.logaddexp(0.0, x)


def _q_factor(matrix):
    q, r = np.linalg.qr(matrix)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _orthogonal(x):
    matrix = x.reshape(-1, x.shape[-1])
    if matrix.shape[0] >= matrix.shape[1]:
        return _q_factor(matrix).reshape(x.shape)
    return _q_factor(matrix.T).T.reshape(x.shape)


def _unit_norm(x):
    return x / np.sqrt((x**2).sum(axis=0, keepdims=True))


def _spectral(x):
    return x / np.linalg.svd(x.reshape(-1, x.shape[-1]), compute_uv=False)[0]


def _softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


CASES = [
    ("positive", lambda: parametrize.Positive(), _softplus, (3, 4)),
    ("positive_exp", lambda: parametrize.Positive("exp"), np.exp, (3, 4)),
    ("orthogonal_tall", lambda: parametrize.Orthogonal("qr"), _orthogonal, (5, 3)),
    ("orthogonal_wide", lambda: parametrize.Orthogonal("qr"), _orthogonal, (3, 5)),
    ("orthogonal_conv", lambda: parametrize.Orthogonal("qr"), _orthogonal, (2, 3, 4)),
    ("unit_norm", lambda: parametrize.UnitNorm(axis=0), _unit_norm, (4, 3)),
    ("spectral", lambda: parametrize.SpectralNorm(exact=True), _spectral, (4, 3)),
    ("symmetric", lambda: parametrize.Symmetric(), lambda x: (x + x.T) / 2, (4, 4)),
    ("skew", lambda: parametrize.Skew(), lambda x: (x - x.T) / 2, (4, 4)),
    ("simplex", lambda: parametrize.Simplex(axis=-1), _softmax_rows, (3, 4)),
]


def _built(make, shape):
    p = make()
    layer = keras.layers.Layer()
    p.build(shape, layer.add_weight)
    return p


@pytest.mark.parametrize("name,make,reference,shape", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradient_match_numpy(name, make, reference, shape):
    rng = np.random.default_rng(3)
    free = rng.normal(size=shape)
    p = _built(make, shape)
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    np.testing.assert_allclose(value, reference(free), atol=2e-5)
    cotangent = rng.normal(size=shape)
    grad = _gradient(p, free, cotangent)
    expected = _finite_differences(reference, free, cotangent)
    np.testing.assert_allclose(grad, expected, atol=2e-4, rtol=1e-3)


def test_weight_norm_value_and_gradient():
    rng = np.random.default_rng(4)
    p = _built(lambda: parametrize.WeightNorm(), (4, 3))
    p.magnitude.assign(np.array([[2.0, -1.0, 0.5]], dtype="float32"))
    free = rng.normal(size=(4, 3))
    g = np.array([[2.0, -1.0, 0.5]])
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    np.testing.assert_allclose(value, g * _unit_norm(free), atol=1e-6)
    cotangent = rng.normal(size=(4, 3))
    grad = _gradient(p, free, cotangent)
    expected = _finite_differences(lambda x: g * _unit_norm(x), free, cotangent)
    np.testing.assert_allclose(grad, expected, atol=2e-4)


def test_power_iteration_spectral_norm_converges_to_exact():
    rng = np.random.default_rng(5)
    free = rng.normal(size=(6, 4)).astype("float32")
    p = _built(lambda: parametrize.SpectralNorm(power_iterations=3), (6, 4))
    for _ in range(20):
        p.update(keras.ops.convert_to_tensor(free))
    sigma = float(to_numpy(p.sigma(keras.ops.convert_to_tensor(free))))
    assert sigma == pytest.approx(np.linalg.svd(free, compute_uv=False)[0], rel=1e-5)


@pytest.mark.parametrize(
    "make,value",
    [
        (lambda: parametrize.Positive(), np.array([[0.2, 1.5], [3.0, 0.01]])),
        (lambda: parametrize.Positive("exp"), np.array([[0.2, 1.5], [3.0, 0.01]])),
        (
            lambda: parametrize.UnitNorm(axis=0),
            _unit_norm(np.arange(1.0, 7).reshape(3, 2)),
        ),
        (lambda: parametrize.WeightNorm(), np.arange(1.0, 7).reshape(3, 2)),
        (
            lambda: parametrize.Orthogonal(),
            _orthogonal(np.arange(1.0, 7).reshape(3, 2)),
        ),
        (
            lambda: parametrize.SpectralNorm(),
            _spectral(np.arange(1.0, 7).reshape(3, 2)),
        ),
        (lambda: parametrize.Symmetric(), np.array([[1.0, 2.0], [2.0, -1.0]])),
        (lambda: parametrize.Skew(), np.array([[0.0, 2.0], [-2.0, 0.0]])),
        (lambda: parametrize.Simplex(axis=0), np.array([[0.25, 0.5], [0.75, 0.5]])),
        (
            lambda: parametrize.Simplex(axis=0, simplex="sparsemax"),
            np.array([[0.0, 0.5], [1.0, 0.5]]),
        ),
    ],
)
def test_right_inverse_keeps_a_value_in_the_set(make, value):
    p = _built(make, value.shape)
    free = p.right_inverse(value.astype("float32"))
    np.testing.assert_allclose(to_numpy(p(free)), value, atol=1e-5)


def test_right_inverse_projects_values_outside_the_set():
    value = np.array([[3.0, -1.0], [0.5, 2.0], [1.0, 1.0]], dtype="float32")
    positive = parametrize.Positive(minimum=0.01)
    np.testing.assert_allclose(
        to_numpy(positive(positive.right_inverse(value))),
        np.maximum(value, 0.01),
        rtol=1e-5,
    )
    orthogonal = _built(lambda: parametrize.Orthogonal(), (3, 2))
    u, _, vt = np.linalg.svd(value.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(
        to_numpy(orthogonal(orthogonal.right_inverse(value))), u @ vt, atol=1e-5
    )
    symmetric = parametrize.Symmetric()
    square = value[:2]
    np.testing.assert_allclose(
        to_numpy(symmetric(symmetric.right_inverse(square))),
        (square + square.T) / 2,
        atol=1e-6,
    )
    simplex = parametrize.Simplex(axis=0, simplex="sparsemax")
    projected = to_numpy(simplex(simplex.right_inverse(value)))
    # The Euclidean projection of [3, 0.5, 1] onto the simplex is [1, 0, 0].
    np.testing.assert_allclose(projected[:, 0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(projected.sum(axis=0), [1.0, 1.0], atol=1e-6)


def test_orthogonal_sample_is_haar():
    # For Haar-distributed Q in O(n): E[trace Q] = 0 and E[trace(Q)^2] = 1,
    # while E[trace(Q^2)] = 1 (Diaconis and Shahshahani, 1994).
    p = _built(lambda: parametrize.Orthogonal(), (4, 4))
    seed = keras.random.SeedGenerator(7)
    draws = np.stack([to_numpy(p(p.sample((4, 4), seed=seed))) for _ in range(300)])
    traces = np.trace(draws, axis1=1, axis2=2)
    assert abs(traces.mean()) < 0.2
    assert abs((traces**2).mean() - 1.0) < 0.3
    squares = np.einsum("nij,nji->n", draws, draws)
    assert abs(squares.mean() - 1.0) < 0.3
    identity = np.broadcast_to(np.eye(4), draws.shape)
    np.testing.assert_allclose(draws @ draws.transpose(0, 2, 1), identity, atol=1e-5)


def test_samples_lie_in_their_sets():
    seed = keras.random.SeedGenerator(3)
    positive = to_numpy(
        parametrize.Positive()(parametrize.Positive().sample((8, 4), seed))
    )
    assert (positive > 0).all()
    simplex = parametrize.Simplex(axis=0)
    rows = to_numpy(simplex(simplex.sample((5, 3), seed)))
    np.testing.assert_allclose(rows.sum(axis=0), np.ones(3), atol=1e-5)
    unit = parametrize.UnitNorm()
    columns = to_numpy(unit(unit.sample((6, 3), seed)))
    np.testing.assert_allclose(np.linalg.norm(columns, axis=0), np.ones(3), atol=1e-5)


@pytest.mark.parametrize(
    "p",
    [
        parametrize.Positive("exp", minimum=0.5),
        parametrize.Orthogonal(),
        parametrize.UnitNorm(axis=[0, 1]),
        parametrize.WeightNorm(axis=-1),
        parametrize.SpectralNorm(power_iterations=2, exact=False),
        parametrize.Symmetric(),
        parametrize.Skew(),
        parametrize.Simplex(axis=0, simplex="entmax15"),
    ],
    ids=repr,
)
def test_serialization_round_trip(p):
    config = parametrize.serialize(p)
    assert config["registered_name"] == f"keras_tether>{type(p).__name__}"
    revived = parametrize.deserialize(config)
    assert type(revived) is type(p)
    assert revived.get_config() == p.get_config()
    assert repr(revived) == repr(p)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: parametrize.Positive(function="relu"), ValueError, "function"),
        (lambda: parametrize.Positive(function=1), TypeError, "function"),
        (lambda: parametrize.Positive(minimum=0.0), ValueError, "minimum"),
        (lambda: parametrize.UnitNorm(axis="0"), TypeError, "axis"),
        (lambda: parametrize.UnitNorm(axis=[]), ValueError, "axis"),
        (lambda: parametrize.SpectralNorm(power_iterations=0), ValueError, "power"),
        (lambda: parametrize.SpectralNorm(exact=1), TypeError, "exact"),
        (lambda: parametrize.Simplex(axis=1.5), TypeError, "axis"),
        (lambda: parametrize.Simplex(simplex="gumbel_softmax"), ValueError, "simplex"),
        (lambda: parametrize.serialize("orthogonal"), TypeError, "parametrization"),
        (lambda: parametrize.deserialize([]), TypeError, "config"),
    ],
)
def test_invalid_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: parametrize.Orthogonal(), (4,)),
        (lambda: parametrize.SpectralNorm(), (4,)),
        (lambda: parametrize.Symmetric(), (3, 4)),
        (lambda: parametrize.Skew(), (4,)),
        (lambda: parametrize.UnitNorm(axis=2), (3, 4)),
        (lambda: parametrize.Simplex(axis=-3), (3, 4)),
    ],
)
def test_build_refuses_weights_of_the_wrong_shape(make, shape):
    with pytest.raises(ValueError, match=r"shape|axis"):
        _built(make, shape)


def test_missing_right_inverse_says_what_to_do():
    class Doubled(parametrize.Parametrization):
        def __call__(self, free):
            return 2 * free

    with pytest.raises(NotImplementedError, match="initial='sample'"):
        Doubled().right_inverse(np.ones(2))
