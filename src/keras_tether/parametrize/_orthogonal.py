"""Orthogonal (and semi-orthogonal) weights through the QR decomposition."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether.parametrize._base import (
    Parametrization,
    as_matrix,
    check_matrix_shape,
)


def _q_factor(matrix: Tensor) -> Tensor:
    """The Q of `matrix = QR` with a positive diagonal in R (a tall matrix)."""
    q, r = ops.qr(matrix, mode="reduced")
    diagonal = ops.diagonal(r)
    signs = ops.where(diagonal < 0, -1.0, 1.0)
    return ops.multiply(q, ops.cast(signs, q.dtype))


@keras.saving.register_keras_serializable(package="keras_tether")
class Orthogonal(Parametrization):
    """Makes a weight orthogonal: the Q factor of the free parameter's QR.

    The weight is viewed as a matrix of shape `(rows, columns)`, where
    `columns` is its last dimension and `rows` the product of the others (for
    a `Dense` kernel, `(input_dim, units)`). With `rows >= columns` the
    weight has orthonormal columns, `W^T W = I`; with `rows < columns` it has
    orthonormal rows, `W W^T = I`; a square weight is orthogonal. The map is
    `W = Q diag(sign(diag(R)))` for the reduced decomposition `free = QR` (of
    `free^T` when it is wide), Gram-Schmidt on the columns of the free
    parameter. It reaches every orthogonal matrix, has the same cost on every
    backend as one QR decomposition, and needs no matrix exponential.

    `right_inverse` returns the nearest orthogonal matrix (the polar factor
    `U V^T` of the SVD `value = U S V^T`), which the map sends to itself, so
    an orthogonal weight is kept exactly and any other weight is projected.
    `sample` draws standard normal entries, whose Q factor with the sign
    correction is distributed uniformly (Haar) on the orthogonal matrices.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> orthogonal = parametrize.Orthogonal()
    >>> weight = keras.ops.convert_to_numpy(
    ...     orthogonal(np.random.default_rng(0).normal(size=(5, 3)))
    ... )
    >>> bool(np.allclose(weight.T @ weight, np.eye(3), atol=1e-5))
    True

    References:
        - [Mezzadri, 2007. How to generate random matrices from the classical
          compact groups](https://arxiv.org/abs/math-ph/0609050)
    """

    def build(self, shape: Shape, add_weight) -> None:
        check_matrix_shape(tuple(shape), "Orthogonal")
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        matrix = as_matrix(free)
        rows, columns = matrix.shape
        if rows >= columns:
            q = _q_factor(matrix)
        else:
            q = ops.transpose(_q_factor(ops.transpose(matrix)))
        return ops.reshape(q, free.shape)

    def right_inverse(self, value: Tensor) -> Tensor:
        value = ops.convert_to_tensor(value, "float32")
        u, _, v = ops.svd(as_matrix(value), full_matrices=False)
        return ops.reshape(ops.matmul(u, v), value.shape)

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        return keras.random.normal(tuple(shape), seed=seed)
