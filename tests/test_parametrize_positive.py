"""`Positive` keeps every entry positive, with a live gradient, at any free value.

References are NumPy float64 formulas written here.
"""

import keras
import numpy as np
import pytest

from keras_tether import parametrize
from keras_tether.layers import Parametrized

to_numpy = keras.ops.convert_to_numpy

_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_FLOAT16_TINY = float(np.finfo(np.float16).tiny)


def _gradient(fn, x, cotangent, dtype="float32"):
    """d/dx sum(fn(x) * cotangent) with the active backend's autodiff."""
    backend = keras.backend.backend()
    x = np.asarray(x, dtype=dtype)
    cotangent = np.asarray(cotangent, dtype=dtype)
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


def _reference(function, free, floor):
    """The weight and its derivative in float64: the function, held at `floor`."""
    free = np.asarray(free, dtype=np.float64)
    if function == "exp":
        lowest = np.log(floor)
        held = np.maximum(free, lowest)
        return np.exp(held), np.exp(held)
    lowest = np.log(np.expm1(floor))
    held = np.maximum(free, lowest)
    return np.logaddexp(0.0, held), 1.0 / (1.0 + np.exp(-held))


# Far below, at and just above the free value where float32 exp and softplus
# reach exactly 0 (about -103.3), and in the ordinary range.
_FREE = np.array([-1e30, -1e4, -120.0, -104.0, -17.0, -15.0, -3.0, 0.0, 4.0])


@pytest.mark.parametrize("function", ["exp", "softplus"])
def test_every_entry_is_at_least_the_floor_with_a_live_gradient(function):
    positive = parametrize.Positive(function)
    assert positive.floor == pytest.approx(1e-7)  # keras.config.epsilon()
    value = to_numpy(positive(_FREE.astype("float32"))).astype(np.float64)
    expected, derivative = _reference(function, _FREE, 1e-7)
    assert (value >= 1e-7 * (1 - 1e-5)).all(), value
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # A loss that wants larger weights (cotangent -1) gets a gradient that
    # raises the free value, also where the weight is held at the floor.
    gradient = _gradient(positive, _FREE, -np.ones_like(_FREE))
    assert (gradient < 0).all(), gradient
    np.testing.assert_allclose(gradient, -derivative, rtol=1e-5)


@pytest.mark.parametrize("function", ["exp", "softplus"])
def test_floor_is_raised_to_the_smallest_normal_number_of_the_dtype(function):
    positive = parametrize.Positive(function, floor=1e-30)
    low = np.array([-1e4, -200.0], dtype="float32")
    assert (to_numpy(positive(low)) >= _FLOAT32_TINY).all()
    half = to_numpy(positive(np.array([-1e4, -30.0], dtype="float16")))
    assert half.dtype == np.float16
    assert (half.astype(np.float64) >= _FLOAT16_TINY * (1 - 1e-3)).all(), half


def test_floor_argument_is_checked_and_saved():
    positive = parametrize.Positive("exp", minimum=0.5, floor=0.01)
    revived = parametrize.deserialize(parametrize.serialize(positive))
    assert revived.floor == 0.01
    value = to_numpy(revived(np.array([-50.0, np.log(0.5)], dtype="float32")))
    np.testing.assert_allclose(value, [0.01, 0.5], rtol=1e-5)
    with pytest.raises(ValueError, match=r"`floor`.*Received: floor=0.1"):
        parametrize.Positive(minimum=0.01, floor=0.1)
    with pytest.raises(ValueError, match=r"Received: floor=0"):
        parametrize.Positive(floor=0)
    with pytest.raises(TypeError, match=r"Received: floor='small'"):
        parametrize.Positive(floor="small")


def _constrained_dense():
    dense = keras.layers.Dense(3, use_bias=False, kernel_initializer="ones")
    layer = Parametrized(dense, {"kernel": parametrize.Positive("exp")})
    model = keras.Sequential([keras.Input((4,)), layer])
    return model, layer


def test_a_large_sgd_step_leaves_every_entry_positive_and_able_to_recover():
    model, layer = _constrained_dense()
    x = np.ones((8, 4), dtype="float32")
    # One step of SGD at learning rate 1 toward a target far below: the free
    # values fall by about 4e3, where exp gives exactly 0 in float32.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.fit(x, np.full((8, 3), -1000.0, "float32"), epochs=1, verbose=0)
    kernel = to_numpy(layer.parametrized_weight("kernel"))
    np.testing.assert_allclose(kernel, np.full((4, 3), 1e-7), rtol=1e-5)

    # The held entries still get a gradient that points back up: Adam, whose
    # steps are about its learning rate times g / (|g| + epsilon), raises
    # every free value when the target asks for larger weights.
    free = layer.trainable_weights[0]
    before = to_numpy(free).copy()
    assert (before < np.log(1e-7)).all()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1.0), loss="mse")
    model.fit(x, np.ones((8, 3), "float32"), epochs=1, verbose=0)
    assert (to_numpy(free) > before).all(), (before, to_numpy(free))
