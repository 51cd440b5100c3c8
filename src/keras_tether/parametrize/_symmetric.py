"""Symmetric and skew-symmetric square weights."""

from __future__ import annotations

import keras
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether.parametrize._base import Parametrization, check_square_shape


def _transpose_last_two(value: Tensor) -> Tensor:
    rank = len(value.shape)
    return ops.transpose(value, tuple(range(rank - 2)) + (rank - 1, rank - 2))


@keras.saving.register_keras_serializable(package="keras_tether")
class Symmetric(Parametrization):
    """Makes a square weight symmetric: `W = (free + free^T) / 2`.

    The transpose swaps the last two axes, so a weight of shape
    `(..., n, n)` is a batch of symmetric matrices. The map is the orthogonal
    projection onto the symmetric matrices, so `right_inverse` is the same
    projection and keeps a symmetric weight exactly.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> weight = parametrize.Symmetric()(np.array([[1.0, 2.0], [0.0, 3.0]]))
    >>> print(keras.ops.convert_to_numpy(weight))
    [[1. 1.]
     [1. 3.]]
    """

    def build(self, shape: Shape, add_weight) -> None:
        check_square_shape(tuple(shape), "Symmetric")
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        return ops.multiply(0.5, ops.add(free, _transpose_last_two(free)))

    def right_inverse(self, value: Tensor) -> Tensor:
        return self(ops.convert_to_tensor(value, "float32"))


@keras.saving.register_keras_serializable(package="keras_tether")
class Skew(Parametrization):
    """Makes a square weight skew-symmetric: `W = (free - free^T) / 2`.

    `W^T = -W`, so the diagonal is zero and `exp(W)` would be orthogonal; a
    skew-symmetric recurrent kernel gives purely oscillatory linear dynamics.
    The map is the orthogonal projection onto the skew-symmetric matrices, so
    `right_inverse` is the same projection.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> weight = parametrize.Skew()(np.array([[1.0, 2.0], [0.0, 3.0]]))
    >>> print(keras.ops.convert_to_numpy(weight))
    [[ 0.  1.]
     [-1.  0.]]
    """

    def build(self, shape: Shape, add_weight) -> None:
        check_square_shape(tuple(shape), "Skew")
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        return ops.multiply(0.5, ops.subtract(free, _transpose_last_two(free)))

    def right_inverse(self, value: Tensor) -> Tensor:
        return self(ops.convert_to_tensor(value, "float32"))
