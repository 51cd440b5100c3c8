"""Orthogonal (and semi-orthogonal) weights: the Cayley map or the QR decomposition."""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_int
from keras_tether.parametrize._base import Parametrization

_METHODS = ("cayley", "qr")


def _swap_last_two(value: Tensor) -> Tensor:
    return ops.swapaxes(value, -1, -2)


def _q_factor(matrix: Tensor) -> Tensor:
    """The Q of `matrix = QR` with a positive diagonal in R (tall matrices)."""
    q, r = ops.qr(matrix, mode="reduced")
    diagonal = ops.diagonal(r, axis1=-2, axis2=-1)
    signs = ops.where(diagonal < 0, -1.0, 1.0)
    return ops.multiply(q, ops.expand_dims(ops.cast(signs, q.dtype), -2))


# Matrices larger than this are inverted by blocks (see `_inverse`).
_BLOCK_SIZE = 64
# Fixed probe vectors for the residual check of the blocked inverse.
_PROBES = 4
# The largest probe residual accepted, in units of the dtype's epsilon:
# 40 eps (5e-6 in float32) is what a pivoted LU inverse leaves on the Cayley
# systems of trained layers, where the orthogonality error is about 1e-6.
_RESIDUAL_EPSILONS = 40.0


def _by_blocks(matrix: Tensor) -> Tensor:
    """`matrix^-1` by recursive 2x2 block elimination, with no pivoting.

    Only for the Cayley system `K`, whose symmetric part is at least `I`:
    every leading block and every Schur complement then has a symmetric part
    at least `I` too, so each is invertible and each inverse has norm at most
    1. The work is matrix products, which run several times faster than a
    pivoted LU inverse of the same size on CPU.
    """
    size = matrix.shape[-1]
    if size <= _BLOCK_SIZE:
        return ops.inv(matrix)
    half = size // 2
    a = matrix[..., :half, :half]
    b = matrix[..., :half, half:]
    c = matrix[..., half:, :half]
    d = matrix[..., half:, half:]
    a_inv = _by_blocks(a)
    a_inv_b = ops.matmul(a_inv, b)
    c_a_inv = ops.matmul(c, a_inv)
    schur_inv = _by_blocks(d - ops.matmul(c, a_inv_b))
    top_right = -ops.matmul(a_inv_b, schur_inv)
    bottom_left = -ops.matmul(schur_inv, c_a_inv)
    top_left = a_inv - ops.matmul(top_right, c_a_inv)
    return ops.concatenate(
        [
            ops.concatenate([top_left, top_right], axis=-1),
            ops.concatenate([bottom_left, schur_inv], axis=-1),
        ],
        axis=-2,
    )


@functools.cache
def _probes(size: int) -> np.ndarray:
    """`_PROBES` fixed unit vectors of length `size`, the same on every call."""
    probes = np.random.default_rng(0).normal(size=(size, _PROBES))
    probes = probes / np.linalg.norm(probes, axis=0)
    probes.flags.writeable = False
    return probes


def _checked_inverse(matrix: Tensor) -> Tensor:
    """The blocked inverse where its residual is small, else a pivoted one."""
    size = matrix.shape[-1]
    dtype = keras.backend.standardize_dtype(matrix.dtype)
    if size <= _BLOCK_SIZE or dtype not in ("float32", "float64"):
        return ops.inv(matrix)
    inverse = _by_blocks(matrix)
    # Since ||K^-1|| <= 1, the error of the inverse is at most the residual
    # K X - I; fixed random probes measure it in a few matrix-vector products.
    # Without pivoting the error grows with ||K|| faster than LU's, and past
    # ||K|| ~ 50 (weights far from the identity) it can reach 1e-5.
    probes = ops.convert_to_tensor(_probes(size), dtype=dtype)
    residual = ops.max(
        ops.abs(ops.matmul(matrix, ops.matmul(inverse, probes)) - probes)
    )
    tolerance = _RESIDUAL_EPSILONS * float(np.finfo(dtype).eps)
    return ops.cond(residual <= tolerance, lambda: inverse, lambda: ops.inv(matrix))


@ops.custom_gradient
def _inverse_reusing_itself(matrix: Tensor):
    inverse = _checked_inverse(matrix)

    def gradient(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        transposed = _swap_last_two(inverse)
        return -ops.matmul(ops.matmul(transposed, upstream), transposed)

    return inverse, gradient


def _inverse(matrix: Tensor) -> Tensor:
    """`K^-1` for the Cayley system, differentiable as `d(K^-1) = -K^-1 dK K^-1`.

    On JAX and TensorFlow the inverse is computed by blocks (checked, with a
    pivoted LU as the fallback) and differentiated in closed form reusing it;
    JAX would otherwise differentiate through LU solves, which cost as much
    as the inverse. PyTorch's own inverse and its gradient are faster there.
    """
    if keras.backend.backend() in ("jax", "tensorflow"):
        return _inverse_reusing_itself(matrix)
    return ops.inv(matrix)


def _cayley(free: Tensor, signs: Tensor | None) -> Tensor:
    """Orthonormal columns from a tall `free = [B; C]` (see `Orthogonal`)."""
    rows, columns = free.shape[-2], free.shape[-1]
    top = free[..., :columns, :]
    identity = ops.eye(columns, dtype=free.dtype)
    # K = I + skew(B) + C^T C / 4: its symmetric part is at least I, so K is
    # invertible for every free parameter and K^-1 has norm at most 1.
    system = identity + 0.5 * (top - _swap_last_two(top))
    if rows > columns:
        bottom = free[..., columns:, :]
        system = system + 0.25 * ops.matmul(_swap_last_two(bottom), bottom)
    inverse = _inverse(system)
    weight = 2.0 * inverse - identity
    if rows > columns:
        weight = ops.concatenate([weight, -ops.matmul(bottom, inverse)], axis=-2)
    if signs is not None:
        weight = ops.multiply(weight, ops.expand_dims(signs, -2))
    return weight


def _column_signs(top: np.ndarray) -> np.ndarray:
    """Signs `d` with `|det(I + top diag(d))| >= 1`, chosen one column at a time.

    The determinant is affine in each column, so of the two signs of column
    `i` one keeps its magnitude from shrinking (a rank-one update, tracked
    through the inverse with the Sherman-Morrison formula).
    """
    size = top.shape[0]
    inverse = np.eye(size)
    signs = np.ones(size)
    for i in range(size):
        column = top[:, i]
        projected = inverse @ column
        sign = 1.0 if projected[i] >= 0 else -1.0
        signs[i] = sign
        inverse = inverse - sign * np.outer(projected, inverse[i]) / (
            1.0 + sign * projected[i]
        )
    return signs


def _cayley_inverse(weight: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The free `[B; C]` that `_cayley` maps to the tall orthonormal `weight`."""
    columns = weight.shape[-1]
    unsigned = weight * signs[..., None, :]
    inverse = np.linalg.inv(unsigned[..., :columns, :] + np.eye(columns))
    top = inverse - np.swapaxes(inverse, -1, -2)
    bottom = -2.0 * unsigned[..., columns:, :] @ inverse
    return np.concatenate([top, bottom], axis=-2)


@keras.saving.register_keras_serializable(package="keras_tether")
class Orthogonal(Parametrization):
    """Makes a weight orthogonal, through the Cayley map or the QR decomposition.

    The weight is viewed as a matrix of shape `(rows, columns)`, where
    `columns` is its last dimension and `rows` the product of the others (for
    a `Dense` kernel `(input_dim, units)`, for a `Conv2D` kernel
    `(kh * kw * in_channels, filters)`). With `rows >= columns` the weight has
    orthonormal columns, `W^T W = I`; with `rows < columns` it has orthonormal
    rows, `W W^T = I`; a square weight is orthogonal. With `batch_axes=b`, the
    first `b` axes index independent matrices, each made orthogonal: a
    `ParallelDense` kernel `(branches, input_dim, units)` with `batch_axes=1`
    has one orthogonal `(input_dim, units)` matrix per branch.

    `method="cayley"` (default) splits a tall free parameter (transposed when
    the weight is wide) into its top `columns x columns` block `B` and the
    rest `C`, and computes `W = [2 K^-1 - I; -C K^-1] D` with
    `K = I + (B - B^T) / 2 + C^T C / 4`: the first `columns` columns of the
    Cayley transform `(I - A)(I + A)^-1` of the skew matrix
    `A = [[B - B^T, -C^T], [C, 0]] / 2`, times a fixed diagonal `D` of signs.
    It costs one inverse of a `columns x columns` matrix, whose symmetric part
    is at least `I` (never singular, well conditioned near `free = 0`, where
    `W = [I; 0] D`). On JAX and TensorFlow a system larger than 64 x 64 is
    inverted by 2 x 2 blocks, in matrix products (several times faster than a
    pivoted LU on CPU, and stable here since every block keeps a symmetric
    part at least `I`); a residual check on fixed probe vectors falls back to
    the pivoted inverse when the weight is so far from `[I; 0] D` that the
    blocks lose accuracy. Every orthogonal matrix is such a Cayley transform times
    some `D` (see Biborski, 2026), so `right_inverse` keeps an orthogonal weight
    exactly: it picks `D` one column at a time so that `|det(I + W_top D)| >= 1`
    and stores it in a non-trainable variable named `<weight>_signs`. Weights
    far from `[I; 0] D` (the Cayley transform of a large `A`, near an
    eigenvalue -1) have large free parameters, where gradients are small; this
    is the map of the scaled-Cayley orthogonal RNNs (Helfrich et al., 2018).

    `method="qr"` computes `W = Q diag(sign(diag(R)))` for the reduced
    decomposition `free = QR`: Gram-Schmidt on the columns of the free
    parameter, with no fixed point to stay near, at the cost of a QR
    decomposition and its gradient (several times slower than the Cayley map
    on CPU, most of all with JAX). Saved models from before the Cayley map
    existed load with `method="qr"`, as they were trained.

    For either method, `right_inverse` projects any other weight onto the
    nearest orthogonal matrix (the polar factor `U V^T` of the SVD), and
    `sample` returns a free parameter whose image is distributed uniformly
    (Haar) on the orthogonal matrices (the sign-corrected Q factor of a
    standard normal matrix).

    Args:
        method: String, `"cayley"` (default) or `"qr"`.
        batch_axes: Non-negative integer, the number of leading axes that
            index independent matrices. Defaults to `0`.

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
        - [Helfrich, Willmott and Ye, 2018. Orthogonal recurrent neural
          networks with scaled Cayley transform](https://arxiv.org/abs/1707.09520)
        - [Biborski, 2026. A constructive Cayley representation of orthogonal
          matrices and applications to optimization](https://arxiv.org/abs/2601.16271)
        - [Mezzadri, 2007. How to generate random matrices from the classical
          compact groups](https://arxiv.org/abs/math-ph/0609050)
    """

    def __init__(self, method: str = "cayley", batch_axes: int = 0) -> None:
        super().__init__()
        if not isinstance(method, str):
            raise TypeError(
                "Expected `method` to be a string. "
                f"Received: method={method!r} of type {type(method).__name__}"
            )
        if method not in _METHODS:
            raise ValueError(
                "Received an invalid value for `method`, expected one of "
                f"{_METHODS}. Received: method={method!r}"
            )
        batch_axes = check_int(batch_axes, "batch_axes")
        if batch_axes < 0:
            raise ValueError(
                "Received an invalid value for `batch_axes`, expected a "
                f"non-negative integer. Received: batch_axes={batch_axes}"
            )
        self.method = method
        self.batch_axes = batch_axes
        self.signs = None

    def build(self, shape: Shape, add_weight) -> None:
        shape = tuple(shape)
        if len(shape) < self.batch_axes + 2:
            raise ValueError(
                f"`Orthogonal` with batch_axes={self.batch_axes} needs a weight "
                f"with at least {self.batch_axes + 2} dimensions. Received: a "
                f"weight of shape={shape}"
            )
        if self.method == "cayley":
            matrix = self._matrix_shape(shape)
            self.signs = add_weight(
                name="signs",
                shape=(*matrix[:-2], min(matrix[-2:])),
                initializer="ones",
                trainable=False,
            )
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        shape = tuple(free.shape)
        matrix = ops.reshape(free, self._matrix_shape(shape))
        wide = matrix.shape[-2] < matrix.shape[-1]
        if wide:
            matrix = _swap_last_two(matrix)
        if self.method == "qr":
            weight = _q_factor(matrix)
        else:
            signs = None
            if self.signs is not None:
                # Only the sign of each entry counts, whatever was assigned.
                signs = ops.where(self.signs < 0, -1.0, 1.0)
                signs = ops.cast(signs, matrix.dtype)
            weight = _cayley(matrix, signs)
        if wide:
            weight = _swap_last_two(weight)
        return ops.reshape(weight, shape)

    def right_inverse(self, value: Tensor) -> Tensor:
        value = ops.convert_to_tensor(value, "float32")
        shape = tuple(value.shape)
        matrix = ops.reshape(value, self._matrix_shape(shape))
        u, _, v = ops.svd(matrix, full_matrices=False)
        nearest = ops.matmul(u, v)
        if self.method == "qr":
            return ops.reshape(nearest, shape)
        return self._cayley_free(ops.convert_to_numpy(nearest), shape)

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        shape = tuple(shape)
        draw = keras.random.normal(shape, seed=seed)
        if self.method == "qr":
            return draw
        matrix = ops.reshape(draw, self._matrix_shape(shape))
        wide = matrix.shape[-2] < matrix.shape[-1]
        haar = _q_factor(_swap_last_two(matrix) if wide else matrix)
        if wide:
            haar = _swap_last_two(haar)
        return self._cayley_free(ops.convert_to_numpy(haar), shape)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "batch_axes": self.batch_axes}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Orthogonal:
        # Configs saved before `method` existed describe the QR map; loading
        # them with it keeps their saved free parameters meaning the same.
        return cls(**{"method": "qr", **config})

    def _matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """`(*batch, rows, columns)`: the matrices the weight is viewed as."""
        batch = shape[: self.batch_axes]
        rows = int(np.prod(shape[self.batch_axes : -1]))
        return (*batch, rows, shape[-1])

    def _cayley_free(self, weight: np.ndarray, shape: tuple[int, ...]) -> Tensor:
        """The Cayley free parameter of an orthonormal `weight`; sets the signs."""
        weight = weight.astype(np.float64)
        wide = weight.shape[-2] < weight.shape[-1]
        if wide:
            weight = np.swapaxes(weight, -1, -2)
        columns = weight.shape[-1]
        tops = weight[..., :columns, :].reshape(-1, columns, columns)
        signs = np.stack([_column_signs(top) for top in tops])
        signs = signs.reshape(weight.shape[:-2] + (columns,))
        if self.signs is not None:
            self.signs.assign(signs.astype(self.signs.dtype))
        elif not np.all(signs == 1.0):
            raise ValueError(
                "This orthogonal value is the Cayley transform of no free "
                "parameter without column signs (an eigenvalue of -1), and an "
                "unbuilt `Orthogonal` has no variable to keep them. Wrap the "
                "layer in `Parametrized`, which builds it, or use "
                "`method='qr'`."
            )
        free = _cayley_inverse(weight, signs)
        if wide:
            free = np.swapaxes(free, -1, -2)
        return ops.convert_to_tensor(free.reshape(shape), "float32")
