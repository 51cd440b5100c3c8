"""Elementwise positive weights."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_positive_number
from keras_tether.parametrize._base import Parametrization

_FUNCTIONS = ("softplus", "exp")


@keras.saving.register_keras_serializable(package="keras_tether")
class Positive(Parametrization):
    """Makes every entry of a weight positive: `softplus(free)` or `exp(free)`.

    With `function="softplus"` the weight is `log(1 + exp(free))`, which grows
    linearly for large `free` and so trains like a plain weight; with
    `function="exp"` it is `exp(free)`, which is scale-invariant (a relative
    step size). Either way every entry is positive after every optimizer step,
    whatever the learning rate; a network whose weights are all positive and
    whose activations are increasing is monotone in each input.

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

    def __init__(self, function: str = "softplus", minimum: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(function, str):
            raise TypeError(
                "Expected `function` to be a string. "
                f"Received: function={function!r} of type {type(function).__name__}"
            )
        if function not in _FUNCTIONS:
            raise ValueError(
                "Received an invalid value for `function`, expected one of "
                f"{_FUNCTIONS}. Received: function={function!r}"
            )
        self.function = function
        self.minimum = check_positive_number(minimum, "minimum")

    def __call__(self, free: Tensor) -> Tensor:
        if self.function == "exp":
            return ops.exp(free)
        return ops.softplus(free)

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
        return {"function": self.function, "minimum": self.minimum}
