"""`keras_tether.ops.grouped_matmul` against NumPy and finite differences."""

import keras
import numpy as np
import pytest

from keras_tether.ops import grouped_matmul

to_numpy = keras.ops.convert_to_numpy


def np_grouped_matmul(x, kernels, group_sizes):
    """The definition, one group at a time, in float64."""
    x = np.asarray(x, "float64")
    kernels = np.asarray(kernels, "float64")
    output = np.zeros((len(x), kernels.shape[-1]))
    start = 0
    for group, size in enumerate(group_sizes):
        output[start : start + size] = x[start : start + size] @ kernels[group]
        start += size
    return output


def backend_gradients(fn, arrays, cotangent):
    """d/d(arrays) sum(fn(*arrays) * cotangent) with the backend's autodiff."""
    backend = keras.backend.backend()
    arrays = [np.asarray(a, "float32") for a in arrays]
    cotangent = np.asarray(cotangent, "float32")
    if backend == "jax":
        import jax

        def loss(*values):
            return (fn(*values) * cotangent).sum()

        grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(arrays)))))(*arrays)
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in arrays]
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fn(*variables) * cotangent)
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    (fn(*tensors) * torch.tensor(cotangent)).sum().backward()
    return [t.grad.numpy() for t in tensors]


def finite_differences(reference, arrays, cotangent, step=1e-6):
    arrays = [np.asarray(a, "float64") for a in arrays]
    gradients = []
    for index, array in enumerate(arrays):
        gradient = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            shifted = [a.copy() for a in arrays]
            shifted[index][position] += step
            up = (reference(*shifted) * cotangent).sum()
            shifted[index][position] -= 2 * step
            down = (reference(*shifted) * cotangent).sum()
            gradient[position] = (up - down) / (2 * step)
        gradients.append(gradient)
    return gradients


def random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


GROUPINGS = [
    ([5, 0, 3, 4], 12, None),  # an empty group in the middle
    ([0, 0, 12, 0], 12, None),  # one non-empty group among empty ones
    ([12], 12, None),  # a single group
    ([3, 0, 2], 9, 2),  # rows past the last group give zeros; tiny tiles
    ([0, 0, 0], 4, None),  # no row in any group
    ([7, 1, 4], 12, 16),  # a tile larger than every group
    ([40, 3, 1, 20], 64, None),  # several tiles per group
]


@pytest.mark.parametrize(("sizes", "rows", "tile_size"), GROUPINGS)
def test_matches_numpy(sizes, rows, tile_size):
    x = random((rows, 5), seed=len(sizes) + rows)
    kernels = random((len(sizes), 5, 3), seed=rows)
    sizes = np.array(sizes, "int32")
    output = grouped_matmul(x, kernels, sizes, tile_size=tile_size)
    assert tuple(output.shape) == (rows, 3)
    np.testing.assert_allclose(
        to_numpy(output), np_grouped_matmul(x, kernels, sizes), atol=1e-5
    )


@pytest.mark.parametrize(
    ("sizes", "rows", "tile_size"),
    [([3, 0, 2, 1], 7, 2), ([6], 6, None), ([0, 4, 0], 4, 8)],
)
def test_gradients_match_finite_differences(sizes, rows, tile_size):
    x = random((rows, 3), seed=1)
    kernels = random((len(sizes), 3, 2), seed=2)
    cotangent = random((rows, 2), seed=3)
    sizes = np.array(sizes, "int32")

    def function(inputs, kernel_bank):
        return grouped_matmul(inputs, kernel_bank, sizes, tile_size=tile_size)

    def reference(inputs, kernel_bank):
        return np_grouped_matmul(inputs, kernel_bank, sizes)

    got = backend_gradients(function, [x, kernels], cotangent)
    expected = finite_differences(reference, [x, kernels], cotangent)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # Empty groups get no gradient, and the others do.
    for group, size in enumerate(sizes):
        assert (np.abs(got[1][group]).max() > 0) == (size > 0)


def test_group_sizes_may_be_traced_under_jit_compile():
    x = random((10, 4), seed=4)
    kernels = random((3, 4, 2), seed=5)
    layer_input = keras.Input(shape=(4,), batch_size=10)
    sizes_input = keras.Input(shape=(), batch_size=3, dtype="int32")

    class Grouped(keras.layers.Layer):
        def call(self, inputs, sizes):
            return grouped_matmul(inputs, keras.ops.convert_to_tensor(kernels), sizes)

    model = keras.Model([layer_input, sizes_input], Grouped()(layer_input, sizes_input))
    model.compile(jit_compile=keras.backend.backend() != "torch")
    for sizes in ([4, 4, 2], [0, 10, 0]):
        sizes = np.array(sizes, "int32")
        output = model.predict_on_batch([x, sizes])
        np.testing.assert_allclose(
            output, np_grouped_matmul(x, kernels, sizes), atol=1e-5
        )


def test_half_precision_inputs_give_half_precision_outputs():
    x = random((6, 4), seed=6)
    kernels = random((2, 4, 3), seed=7)
    output = grouped_matmul(
        keras.ops.cast(x, "float16"),
        keras.ops.cast(kernels, "float16"),
        np.array([2, 4], "int32"),
    )
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    np.testing.assert_allclose(
        to_numpy(output).astype("float64"),
        np_grouped_matmul(x, kernels, [2, 4]),
        atol=2e-2,
    )


BAD_INPUTS = [
    ((6,), (2, 6, 3), [3, 3], ValueError, r"`inputs`.*inputs.shape=\(6,\)"),
    ((6, 4), (2, 4), [3, 3], ValueError, r"`kernels`.*kernels.shape=\(2, 4\)"),
    ((6, 4), (2, 5, 3), [3, 3], ValueError, r"kernels.shape\[1\].*\(4\)"),
    ((6, 4), (2, 4, 3), [6], ValueError, r"`group_sizes`.*\(2\).*shape=\(1,\)"),
    ((6, 4), (0, 4, 3), [], ValueError, r"at least one group"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_inputs_are_named_in_the_error(case):
    x_shape, kernel_shape, sizes, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        grouped_matmul(
            np.zeros(x_shape, "float32"),
            np.zeros(kernel_shape, "float32"),
            np.array(sizes, "int32"),
        )


def test_float_group_sizes_and_bad_tiles_are_refused():
    x = np.zeros((6, 4), "float32")
    kernels = np.zeros((2, 4, 3), "float32")
    with pytest.raises(TypeError, match=r"`group_sizes`.*integer.*float32"):
        grouped_matmul(x, kernels, np.array([3.0, 3.0], "float32"))
    with pytest.raises(ValueError, match=r"`tile_size`.*tile_size=0"):
        grouped_matmul(x, kernels, np.array([3, 3], "int32"), tile_size=0)
