"""Unit-norm weights and weight normalization (direction times magnitude)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether.parametrize._base import (
    Parametrization,
    check_axes,
    reduction_axes,
)

# Added under the square root so that a zero slice yields zeros, not NaN; far
# below float32 resolution for any slice of reasonable norm.
_TINY = 1e-30


def _inverse_norm(free: Tensor, axes: tuple[int, ...]) -> Tensor:
    squared = ops.sum(ops.square(free), axis=axes, keepdims=True)
    return ops.rsqrt(squared + _TINY)


def _normalize(free: Tensor, axes: tuple[int, ...]) -> Tensor:
    free = ops.convert_to_tensor(free)
    return ops.multiply(free, _inverse_norm(free, axes))


@keras.saving.register_keras_serializable(package="keras_tether")
class UnitNorm(Parametrization):
    """Gives every slice of a weight unit Euclidean norm: `free / ||free||`.

    The norm is taken over `axis`. Like `keras.constraints.UnitNorm`, with
    `axis=0` each column of a `Dense` kernel `(input_dim, units)` (the
    incoming weights of one unit) has norm 1; the default, `None`, takes the
    norm over every axis but the last, which is the same for a `Dense` kernel
    and gives one unit-norm filter per output channel of a convolution kernel.
    Unlike the constraint, the norm is exact after every optimizer step, and
    the gradient is projected onto the sphere by the map itself.

    `right_inverse` returns the normalized value; `sample` draws slices
    uniformly on the sphere.

    Args:
        axis: Integer, tuple of integers or `None`, the axes over which the
            norm is taken. Defaults to `None`, every axis but the last.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> weight = parametrize.UnitNorm(axis=0)(np.array([[3.0, 1.0], [4.0, 0.0]]))
    >>> print(keras.ops.convert_to_numpy(weight))
    [[0.6 1. ]
     [0.8 0. ]]
    """

    def __init__(self, axis: int | tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.axis = check_axes(axis)

    def build(self, shape: Shape, add_weight) -> None:
        reduction_axes(self.axis, len(shape))
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        return _normalize(free, reduction_axes(self.axis, len(free.shape)))

    def right_inverse(self, value: Tensor) -> Tensor:
        return self(ops.convert_to_tensor(value, "float32"))

    def get_config(self) -> dict[str, Any]:
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {"axis": axis}


@keras.saving.register_keras_serializable(package="keras_tether")
class WeightNorm(Parametrization):
    """Weight normalization: a unit-norm direction times a learned magnitude.

    The weight is `g * v / ||v||`, where the free parameter `v` gives the
    direction, the norm is taken over `axis` (as in `UnitNorm`), and the
    magnitude `g` is a trainable variable of its own, one entry per slice
    (shape of the weight with the reduced axes set to 1), named
    `<weight>_magnitude` in the `Parametrized` layer. Decoupling length from
    direction conditions the optimization (Salimans and Kingma, 2016); Keras 3
    ships no weight-normalization layer.

    `right_inverse` keeps the value exactly: `v = value`, `g = ||value||`.
    `sample` draws a uniform direction and sets `g = 1`.

    Args:
        axis: Integer, tuple of integers or `None`, the axes over which the
            norm is taken. Defaults to `None`, every axis but the last.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import layers, parametrize
    >>> dense = layers.Parametrized(
    ...     keras.layers.Dense(2), {"kernel": parametrize.WeightNorm()}
    ... )
    >>> dense.build((None, 3))
    >>> [w.path.split("/")[-1] for w in dense.weights]
    ['kernel_magnitude', 'kernel', 'bias']

    References:
        - [Salimans and Kingma, 2016. Weight normalization: a simple
          reparameterization to accelerate training of deep neural
          networks](https://arxiv.org/abs/1602.07868)
    """

    def __init__(self, axis: int | tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.axis = check_axes(axis)
        self.magnitude = None

    def build(self, shape: Shape, add_weight) -> None:
        shape = tuple(shape)
        axes = reduction_axes(self.axis, len(shape))
        magnitude_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
        self.magnitude = add_weight(
            name="magnitude", shape=magnitude_shape, initializer="ones"
        )
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        axes = reduction_axes(self.axis, len(free.shape))
        free = ops.convert_to_tensor(free)
        magnitude = ops.cast(self.magnitude, free.dtype)
        # Scale the small per-slice factor first: one full-size product.
        return ops.multiply(free, ops.multiply(magnitude, _inverse_norm(free, axes)))

    def right_inverse(self, value: Tensor) -> Tensor:
        value = ops.convert_to_tensor(value, "float32")
        axes = reduction_axes(self.axis, len(value.shape))
        if self.magnitude is not None:
            norm = ops.sqrt(ops.sum(ops.square(value), axis=axes, keepdims=True))
            self.magnitude.assign(norm)
        return value

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        if self.magnitude is not None:
            self.magnitude.assign(ops.ones(self.magnitude.shape))
        return keras.random.normal(tuple(shape), seed=seed)

    def get_config(self) -> dict[str, Any]:
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {"axis": axis}
