"""Elementwise positive weights."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_choice, check_positive_number
from keras_tether.parametrize._base import Parametrization

_FUNCTIONS = ("softplus", "exp")

# A floor below a dtype's smallest normal number could be flushed to zero.
_SMALLEST_NORMAL = {
    "float16": float(np.finfo(np.float16).tiny),
    "bfloat16": float(np.finfo(np.float32).tiny),  # float32's exponent range
    "float32": float(np.finfo(np.float32).tiny),
    "float64": float(np.finfo(np.float64).tiny),
}


@keras.saving.register_keras_serializable(package="keras_tether")
class Positive(Parametrization):
    """Makes every entry of a weight positive: `softplus(free)` or `exp(free)`.

    With `function="softplus"` the weight is `log(1 + exp(free))`, which grows
    linearly for large `free` and so trains like a plain weight; with
    `function="exp"` it is `exp(free)`, which is scale-invariant (a relative
    step size). A network whose weights are all positive and whose
    activations are increasing is monotone in each input.

    Both functions reach 0 in floating point (near `free = -104` for `exp`
    in float32), where their gradient is 0 too: an entry pushed there by a
    large step would be stuck at 0 for good. So every entry is at least
    `floor`, whatever the learning rate: where `free` lies below the value
    that maps to `floor`, the weight is held at `floor` and the gradient
    passes to `free` as it would at that value (non-zero, and pointing back
    up when the loss wants a larger weight), so the entry can recover. The
    floor is raised to the smallest normal number of the weight's dtype
    where that is larger (float16: about `6.1e-5`), since a smaller one
    could be flushed to zero.

    `right_inverse` maps a positive value back exactly; entries that are not
    positive are first raised to `minimum` (the projection onto the set
    `w >= minimum`). `sample` draws half-normal entries scaled by
    `1 / sqrt(fan_in)`, where `fan_in` is the product of all but the last
    dimension.

    Args:
        function: String, `"softplus"` (default) or `"exp"`.
        minimum: Positive float, the value that non-positive entries are
            raised to when a layer's current weight is kept. Defaults to
            `1e-3`.
        floor: Positive float, at most `minimum`: the smallest value an
            entry takes. Defaults to `None`, `keras.config.epsilon()` when
            the object is made (`1e-7` unless configured).

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> positive = parametrize.Positive()
    >>> weight = positive(np.array([-3.0, 0.0, 3.0]))
    >>> print(np.round(keras.ops.convert_to_numpy(weight), 3))
    [0.049 0.693 3.049]
    >>> free = positive.right_inverse(np.array([0.5, -1.0]))
    >>> print(np.round(keras.ops.convert_to_numpy(positive(free)), 3))
    [0.5   0.001]
    """

    def __init__(
        self,
        function: str = "softplus",
        minimum: float = 1e-3,
        floor: float | None = None,
    ) -> None:
        super().__init__()
        self.function = check_choice(function, _FUNCTIONS, "function")
        self.minimum = check_positive_number(minimum, "minimum")
        if floor is None:
            floor = keras.config.epsilon()
        self.floor = check_positive_number(floor, "floor")
        if self.floor > self.minimum:
            raise ValueError(
                "Received an invalid value for `floor`, expected a number no "
                f"larger than `minimum`={self.minimum}. Received: floor={floor}"
            )

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        dtype = keras.backend.standardize_dtype(free.dtype)
        if dtype not in _SMALLEST_NORMAL:
            raise TypeError(
                "Expected the free parameter of `Positive` to have a float "
                f"dtype, one of {tuple(_SMALLEST_NORMAL)}. Received: a free "
                f"parameter of dtype {dtype}"
            )
        floor = max(self.floor, _SMALLEST_NORMAL[dtype])
        if self.function == "exp":
            lowest = math.log(floor)
        else:
            lowest = math.log(math.expm1(floor))
        # Below `lowest` the value is `lowest` and the gradient that of the
        # identity: the weight's gradient there is the function's at `lowest`.
        through = ops.add(lowest, ops.subtract(free, ops.stop_gradient(free)))
        held = ops.where(ops.less(free, lowest), through, free)
        if self.function == "exp":
            return ops.exp(held)
        return ops.softplus(held)

    def right_inverse(self, value: Tensor) -> Tensor:
        value = ops.maximum(ops.convert_to_tensor(value, "float32"), self.minimum)
        if self.function == "exp":
            return ops.log(value)
        # log(expm1(w)), written so that it neither overflows for large w nor
        # loses precision for small w.
        return ops.add(value, ops.log(ops.negative(ops.expm1(ops.negative(value)))))

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        shape = tuple(shape)
        fan_in = math.prod(shape[:-1]) if len(shape) > 1 else shape[0]
        draw = ops.abs(keras.random.normal(shape, seed=seed))
        return self.right_inverse(draw / math.sqrt(max(fan_in, 1)))

    def get_config(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "minimum": self.minimum,
            "floor": self.floor,
        }
