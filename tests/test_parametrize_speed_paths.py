"""The fast paths of the parametrizations: the Cayley map, stacked matrices, caching.

Values are checked against NumPy float64 formulas written here from the
definitions (the full Cayley transform `(I - A)(I + A)^-1`, not the block
formula the library evaluates), gradients against central finite differences.
"""

import contextlib

import keras
import numpy as np
import pytest

from keras_tether import parametrize
from keras_tether.layers import ParallelDense, Parametrized

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


def _cayley_columns(free, signs):
    """First columns of (I - A)(I + A)^-1, A = [[B - B^T, -C^T], [C, 0]] / 2."""
    rows, columns = free.shape
    top, bottom = free[:columns], free[columns:]
    skew = np.zeros((rows, rows))
    skew[:columns, :columns] = top - top.T
    skew[columns:, :columns] = bottom
    skew[:columns, columns:] = -bottom.T
    skew /= 2.0
    identity = np.eye(rows)
    full = (identity - skew) @ np.linalg.inv(identity + skew)
    return full[:, :columns] * signs


def _cayley_reference(free, signs, batch_axes=0):
    """The documented Cayley weight of `free`, per matrix, in float64."""
    shape = free.shape
    batch = shape[:batch_axes]
    matrices = free.reshape(batch + (-1, shape[-1]))
    wide = matrices.shape[-2] < matrices.shape[-1]
    if wide:
        matrices = np.swapaxes(matrices, -1, -2)
    flat = matrices.reshape((-1,) + matrices.shape[-2:])
    flat_signs = np.reshape(signs, (flat.shape[0], -1))
    weights = np.stack(
        [_cayley_columns(m, s) for m, s in zip(flat, flat_signs, strict=True)]
    ).reshape(matrices.shape)
    if wide:
        weights = np.swapaxes(weights, -1, -2)
    return weights.reshape(shape)


def _built(p, shape):
    p.build(shape, keras.layers.Layer().add_weight)
    return p


def _orthonormal_error(matrices):
    """Largest deviation from orthonormal columns (or rows) over a stack."""
    if matrices.shape[-2] < matrices.shape[-1]:
        matrices = np.swapaxes(matrices, -1, -2)
    gram = np.swapaxes(matrices, -1, -2) @ matrices
    return np.abs(gram - np.eye(matrices.shape[-1])).max()


def _with_random_signs(rng, shape, batch_axes):
    """A built Cayley map with random column signs, and its numpy reference."""
    p = _built(parametrize.Orthogonal(batch_axes=batch_axes), shape)
    signs = rng.choice([-1.0, 1.0], size=tuple(p.signs.shape))
    p.signs.assign(signs.astype("float32"))
    return p, lambda x: _cayley_reference(x, signs, batch_axes)


SHAPES = [
    ((5, 3), 0),
    ((3, 5), 0),
    ((4, 4), 0),
    ((2, 3, 4), 0),  # a Conv1D kernel: one (6, 4) matrix
    ((3, 4, 2), 1),  # a ParallelDense kernel: three (4, 2) matrices
    ((2, 2, 3), 1),  # two branches of wide (2, 3) matrices
]


@pytest.mark.parametrize("shape,batch_axes", SHAPES, ids=str)
def test_cayley_value_and_gradient_match_the_definition(shape, batch_axes):
    rng = np.random.default_rng(0)
    p, reference = _with_random_signs(rng, shape, batch_axes)
    free = rng.normal(size=shape)
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    np.testing.assert_allclose(value, reference(free), atol=2e-5)
    cotangent = rng.normal(size=shape)
    np.testing.assert_allclose(
        _gradient(p, free, cotangent),
        _finite_differences(reference, free, cotangent),
        atol=2e-4,
        rtol=1e-3,
    )


@pytest.mark.parametrize("shape,batch_axes", SHAPES, ids=str)
def test_qr_method_makes_each_matrix_of_a_stack_orthogonal(shape, batch_axes):
    free = np.random.default_rng(1).normal(size=shape)
    p = _built(parametrize.Orthogonal("qr", batch_axes=batch_axes), shape)
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    matrices = value.reshape(shape[:batch_axes] + (-1, shape[-1]))
    assert _orthonormal_error(matrices) < 1e-5
    # Gram-Schmidt keeps the span of the first column of each tall matrix.
    source = free.reshape(matrices.shape)
    if matrices.shape[-2] >= matrices.shape[-1]:
        first = (
            source[..., :, 0] / np.linalg.norm(source[..., :, 0], axis=-1)[..., None]
        )
        np.testing.assert_allclose(matrices[..., :, 0], first, atol=1e-5)


LARGE_SHAPES = [
    ((150, 130), 0),  # past the block size, split unevenly twice
    ((70, 200), 0),  # wide: the system is 70 x 70 after the transpose
    ((2, 97, 97), 1),  # a stack of square matrices
]


@pytest.mark.parametrize("shape,batch_axes", LARGE_SHAPES, ids=str)
def test_large_cayley_value_and_gradient_match_the_definition(shape, batch_axes):
    # Systems larger than 64 x 64 are inverted by blocks on JAX and TensorFlow.
    rng = np.random.default_rng(3)
    p, reference = _with_random_signs(rng, shape, batch_axes)
    free = 0.2 * rng.normal(size=shape)
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    np.testing.assert_allclose(value, reference(free), atol=2e-5)
    matrices = value.reshape(shape[:batch_axes] + (-1, shape[-1]))
    assert _orthonormal_error(matrices) < 1e-5
    # Too many entries for finite differences one by one: compare the
    # derivative along random directions instead.
    cotangent = rng.normal(size=shape)
    grad = _gradient(p, free, cotangent).astype(np.float64)
    for _ in range(3):
        direction = rng.normal(size=shape)
        step = 1e-5
        expected = (
            (reference(free + step * direction) - reference(free - step * direction))
            * cotangent
        ).sum() / (2 * step)
        assert (grad * direction).sum() == pytest.approx(expected, rel=2e-3)


def test_blocked_inverse_of_a_cayley_system_matches_numpy():
    from keras_tether.parametrize._orthogonal import _by_blocks

    rng = np.random.default_rng(4)
    top = rng.normal(size=(3, 200, 200))
    system = np.eye(200) + 0.5 * (top - np.swapaxes(top, -1, -2))
    inverse = to_numpy(_by_blocks(keras.ops.convert_to_tensor(system, "float32")))
    np.testing.assert_allclose(inverse, np.linalg.inv(system), atol=1e-5)


def test_weights_far_from_the_identity_stay_orthogonal():
    # Large free parameters give a Cayley system of norm ~700, where block
    # elimination without pivoting loses accuracy: the residual check must
    # notice and take the pivoted inverse instead.
    from keras_tether.parametrize._orthogonal import _by_blocks

    rng = np.random.default_rng(5)
    free = 32.0 * rng.normal(size=(256, 256))
    system = np.eye(256) + 0.5 * (free - free.T)
    blocked = to_numpy(_by_blocks(keras.ops.convert_to_tensor(system, "float32")))
    assert _orthonormal_error(2.0 * blocked.astype(np.float64) - np.eye(256)) > 1e-5
    p = _built(parametrize.Orthogonal(), (256, 256))
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    assert _orthonormal_error(value.astype(np.float64)) < 1e-5


def _reflection(size, rng):
    vector = rng.normal(size=(size, 1))
    return np.eye(size) - 2.0 * vector @ vector.T / (vector.T @ vector)


@pytest.mark.parametrize(
    "name",
    ["reflection", "swap", "minus_identity", "haar_det_minus_one", "tall_flip"],
)
def test_right_inverse_keeps_weights_with_eigenvalue_minus_one(name):
    # Each of these has -1 as an eigenvalue (of its top block), so the plain
    # Cayley transform cannot reach it: the column signs must.
    rng = np.random.default_rng(2)
    if name == "reflection":
        value = _reflection(5, rng)
    elif name == "swap":
        value = np.array([[0.0, 1.0], [1.0, 0.0]])
    elif name == "minus_identity":
        value = -np.eye(4)
    elif name == "haar_det_minus_one":
        q, r = np.linalg.qr(rng.normal(size=(32, 32)))
        value = q * np.sign(np.diag(r))
        if np.linalg.det(value) > 0:
            value[:, 0] = -value[:, 0]
    else:
        value = np.array([[-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    p = _built(parametrize.Orthogonal(), value.shape)
    free = p.right_inverse(value.astype("float32"))
    np.testing.assert_allclose(to_numpy(p(free)), value, atol=1e-5)
    signs = to_numpy(p.signs)
    assert set(np.unique(signs)) <= {-1.0, 1.0}
    assert np.isfinite(to_numpy(free)).all()


def test_right_inverse_without_built_signs():
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]], dtype="float32")
    p = parametrize.Orthogonal()
    np.testing.assert_allclose(
        to_numpy(p(p.right_inverse(rotation))), rotation, atol=1e-6
    )
    with pytest.raises(ValueError, match="method='qr'"):
        p.right_inverse(np.diag([1.0, -1.0]).astype("float32"))


def test_identity_is_the_zero_free_parameter():
    p = _built(parametrize.Orthogonal(), (6, 4))
    free = to_numpy(p.right_inverse(np.eye(6, 4, dtype="float32")))
    np.testing.assert_allclose(free, np.zeros((6, 4)), atol=1e-7)


def test_any_assigned_signs_still_give_an_orthogonal_weight():
    p = _built(parametrize.Orthogonal(), (4, 3))
    p.signs.assign(np.array([0.3, -2.0, 0.0], dtype="float32"))
    free = np.random.default_rng(3).normal(size=(4, 3))
    value = to_numpy(p(keras.ops.convert_to_tensor(free, "float32")))
    np.testing.assert_allclose(
        value, _cayley_reference(free, np.array([1.0, -1.0, 1.0])), atol=1e-5
    )


def test_haar_sample_per_branch():
    # 400 independent 3x3 branches in one draw: for Haar Q in O(3),
    # E[trace Q] = 0 and E[trace(Q)^2] = E[trace(Q^2)] = 1, and half the
    # determinants are -1 (which the plain Cayley map never reaches).
    shape = (400, 3, 3)
    p = _built(parametrize.Orthogonal(batch_axes=1), shape)
    draws = to_numpy(p(p.sample(shape, seed=keras.random.SeedGenerator(4))))
    assert _orthonormal_error(draws) < 1e-5
    traces = np.trace(draws, axis1=1, axis2=2)
    assert abs(traces.mean()) < 0.2
    assert abs((traces**2).mean() - 1.0) < 0.25
    assert abs(np.einsum("nij,nji->n", draws, draws).mean() - 1.0) < 0.25
    assert abs((np.linalg.det(draws) < 0).mean() - 0.5) < 0.1


def test_configs_saved_before_method_existed_load_the_qr_map():
    old = {
        "module": "keras_tether.parametrize._orthogonal",
        "class_name": "Orthogonal",
        "config": {},
        "registered_name": "keras_tether>Orthogonal",
    }
    loaded = parametrize.deserialize(old)
    assert (loaded.method, loaded.batch_axes) == ("qr", 0)
    fresh = parametrize.deserialize(parametrize.serialize(parametrize.Orthogonal()))
    assert (fresh.method, fresh.batch_axes) == ("cayley", 0)
    stacked = parametrize.Orthogonal("qr", batch_axes=2)
    assert parametrize.deserialize(parametrize.serialize(stacked)).get_config() == {
        "method": "qr",
        "batch_axes": 2,
    }


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"method": "householder"}, ValueError, "Received: method='householder'"),
        ({"method": 1}, TypeError, "method"),
        ({"batch_axes": -1}, ValueError, "Received: batch_axes=-1"),
        ({"batch_axes": 1.0}, TypeError, "batch_axes"),
        ({"batch_axes": True}, TypeError, "batch_axes"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        parametrize.Orthogonal(**kwargs)


def test_batch_axes_needs_matrices():
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        _built(parametrize.Orthogonal(batch_axes=1), (4, 4))


@pytest.mark.parametrize("method", ["cayley", "qr"])
def test_parallel_dense_branches_stay_orthogonal_under_adam(method):
    branches, width, units = 3, 5, 4
    layer = ParallelDense(units, branches=branches, use_bias=False)
    wrapper = Parametrized(
        layer,
        {"kernel": parametrize.Orthogonal(method, batch_axes=1)},
        initial="sample",
        seed=3,
    )
    inputs = keras.Input((width,))
    model = keras.Model(inputs, wrapper(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss="mse")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, width)).astype("float32")
    y = rng.normal(size=(32, branches, units)).astype("float32")
    errors = []
    for _ in range(6):
        model.train_on_batch(x, y)
        kernel = to_numpy(wrapper.parametrized_weight("kernel"))
        errors.append(_orthonormal_error(kernel))
    assert max(errors) < 1e-5, errors
    # Each branch is orthonormal on its own, so the flattened stack is not.
    flat = kernel.reshape(-1, units)
    assert np.abs(flat.T @ flat - np.eye(units)).max() > 0.5
    np.testing.assert_allclose(
        to_numpy(model.predict(x, verbose=0)),
        np.einsum("bi,nio->bno", x, kernel),
        atol=1e-5,
    )


def test_conv_kernel_stays_one_flattened_matrix():
    conv = keras.layers.Conv2D(4, 3)
    wrapper = Parametrized(conv, {"kernel": parametrize.Orthogonal()})
    wrapper.build((None, 8, 8, 2))
    kernel = to_numpy(wrapper.parametrized_weight("kernel"))
    assert kernel.shape == (3, 3, 2, 4)
    assert _orthonormal_error(kernel.reshape(-1, 4)) < 1e-5


class _Counting(parametrize.Orthogonal):
    """The Cayley map, counting its evaluations (registered for cloning)."""

    calls = 0

    def __call__(self, free):
        type(self).calls += 1
        return super().__call__(free)


def _tied_autoencoder(name="encoder"):
    from keras_tether.layers import ReversibleDense

    encoder = ReversibleDense(3, name=name)
    wrapper = Parametrized(encoder, {"kernel": _Counting()})
    inputs = keras.Input((5,))
    return keras.Model(inputs, wrapper(wrapper(inputs), reverse=True)), wrapper


def test_cached_computes_a_tied_kernel_once():
    model, wrapper = _tied_autoencoder()
    x = np.random.default_rng(6).normal(size=(4, 5)).astype("float32")
    _Counting.calls = 0
    expected = to_numpy(model(x))
    assert _Counting.calls == 2  # the forward call, then the reverse call
    _Counting.calls = 0
    with parametrize.cached():
        np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-6)
        np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-6)
    # TensorFlow variables show no identity of their value: nothing is reused.
    assert _Counting.calls == (4 if keras.backend.backend() == "tensorflow" else 1)
    _Counting.calls = 0
    model(x)
    assert _Counting.calls == 2  # the block is closed: nothing is kept


def test_cached_values_follow_assignments():
    wrapper = Parametrized(keras.layers.Dense(3), {"kernel": parametrize.Orthogonal()})
    wrapper.build((None, 4))
    free = wrapper.free_weight("kernel")
    signs = to_numpy(wrapper.parametrizations["kernel"].signs)
    new = np.random.default_rng(7).normal(size=(4, 3))
    with parametrize.cached():
        before = to_numpy(wrapper.parametrized_weight("kernel"))
        free.assign(new.astype("float32"))
        after = to_numpy(wrapper.parametrized_weight("kernel"))
    np.testing.assert_allclose(after, _cayley_reference(new, signs), atol=1e-5)
    assert np.abs(after - before).max() > 1e-2


def test_fit_inside_cached_trains_exactly_as_outside():
    x = np.random.default_rng(8).normal(size=(16, 5)).astype("float32")
    results = []
    for use_cache in (False, True):
        keras.utils.set_random_seed(9)
        model, wrapper = _tied_autoencoder()
        model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
        context = parametrize.cached() if use_cache else contextlib.nullcontext()
        with context:
            # A prediction first: its kernel (computed without gradients on
            # PyTorch) must not stand in for the first training step's.
            first = to_numpy(model.predict(x, verbose=0))
            losses = [float(model.train_on_batch(x, x)) for _ in range(4)]
            prediction = to_numpy(model.predict(x, verbose=0))
        assert np.abs(prediction - first).max() > 1e-3
        kernel = to_numpy(wrapper.parametrized_weight("kernel"))
        results.append((losses, prediction, kernel))
    (losses, prediction, kernel), (cached_losses, cached_prediction, cached_kernel) = (
        results
    )
    assert len(set(losses)) == 4  # the kernel moved at every step
    np.testing.assert_allclose(cached_losses, losses, rtol=1e-6)
    np.testing.assert_allclose(cached_prediction, prediction, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cached_kernel, kernel, atol=1e-6)
    assert _orthonormal_error(cached_kernel) < 1e-5


def test_cached_belongs_to_its_thread():
    import threading

    model, _ = _tied_autoencoder()
    x = np.ones((2, 5), dtype="float32")
    model(x)
    counts = []

    def other_thread():
        _Counting.calls = 0
        model(x)
        counts.append(_Counting.calls)

    with parametrize.cached():
        model(x)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert counts == [2]
