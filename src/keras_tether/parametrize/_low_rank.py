"""Weights of bounded rank: the product of two thin factors."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_positive_int
from keras_tether.parametrize._base import (
    Parametrization,
    as_matrix,
    check_matrix_shape,
)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


@keras.saving.register_keras_serializable(package="keras_tether")
class LowRank(Parametrization):
    """Makes a weight of rank at most `rank`: the product of two factors.

    The weight is viewed as a matrix of shape `(rows, columns)`, where
    `columns` is its last dimension and `rows` the product of the others (for
    a `Dense` kernel, `(input_dim, units)`), and computed as `W = L R` from
    two free factors, `L` of shape `(rows, rank)` and `R` of shape
    `(rank, columns)`. The weight has rank at most `rank` after every
    optimizer step, and the layer trains `rank * (rows + columns)` parameters
    instead of `rows * columns`. In a `Parametrized` layer the factors are
    variables of the wrapper named `<weight>_left` and `<weight>_right`;
    `count_params` counts them, not the layer's own variable, which is kept
    aside (and set to `L R` when the model is saved or the wrapper removed).

    `right_inverse` returns the best approximation of rank `rank` (in the
    Frobenius and spectral norms, by the Eckart-Young theorem): the truncated
    singular value decomposition `U_r S_r V_r^T`, split evenly as
    `L = U_r sqrt(S_r)` and `R = sqrt(S_r) V_r^T`, so a weight of rank at
    most `rank` is kept exactly and any other weight is projected. `sample`
    draws both factors with independent normal entries of variance
    `sqrt(v / rank)`, where `v = 2 / (rows + columns)`, so that each entry of
    `W` has variance `v`, that of the Glorot initializers (Keras' default for
    kernels) on the matrix view.

    Args:
        rank: Positive integer, the largest rank of the weight; at most
            `min(rows, columns)`, checked when the weight is known.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import layers, parametrize
    >>> dense = layers.Parametrized(
    ...     keras.layers.Dense(8, use_bias=False), {"kernel": parametrize.LowRank(2)}
    ... )
    >>> dense.build((None, 10))
    >>> [tuple(w.shape) for w in dense.weights]
    [(10, 2), (2, 8)]
    >>> dense.count_params()  # 2 * (10 + 8), not 10 * 8
    36
    >>> kernel = keras.ops.convert_to_numpy(dense.parametrized_weight("kernel"))
    >>> int(np.linalg.matrix_rank(kernel))
    2

    References:
        - [Eckart and Young, 1936. The approximation of one matrix by another
          of lower rank](https://doi.org/10.1007/BF02288367)
    """

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = check_positive_int(rank, "rank")

    def build(self, shape: Shape, add_weight) -> None:
        shape = tuple(shape)
        check_matrix_shape(shape, "LowRank")
        rows, columns = _matrix_shape(shape)
        if self.rank > min(rows, columns):
            raise ValueError(
                "Received an invalid value for `rank`, expected at most "
                f"min(rows, columns) = {min(rows, columns)} for a weight of "
                f"shape {shape} (a {rows} x {columns} matrix). "
                f"Received: rank={self.rank}"
            )
        super().build(shape, add_weight)

    def free_shapes(self, shape: Shape) -> dict[str, tuple[int, ...]]:
        rows, columns = _matrix_shape(tuple(shape))
        return {"left": (rows, self.rank), "right": (self.rank, columns)}

    def __call__(self, free: dict[str, Tensor]) -> Tensor:
        matrix = ops.matmul(free["left"], free["right"])
        if self._built_shape is None:
            return matrix
        return ops.reshape(matrix, self._built_shape)

    def right_inverse(self, value: Tensor) -> dict[str, Tensor]:
        value = ops.convert_to_tensor(value, "float32")
        u, s, v = ops.svd(as_matrix(value), full_matrices=False)
        root = ops.sqrt(s[: self.rank])
        return {
            "left": ops.multiply(u[:, : self.rank], root[None, :]),
            "right": ops.multiply(root[:, None], v[: self.rank]),
        }

    def sample(self, shape: Shape, seed: Any = None) -> dict[str, Tensor]:
        shapes = self.free_shapes(shape)
        rows, columns = _matrix_shape(tuple(shape))
        stddev = (2.0 / (rows + columns) / self.rank) ** 0.25
        seed = keras.random.SeedGenerator(seed)
        return {
            name: keras.random.normal(factor, stddev=stddev, seed=seed)
            for name, factor in shapes.items()
        }

    def get_config(self) -> dict[str, Any]:
        return {"rank": self.rank}
