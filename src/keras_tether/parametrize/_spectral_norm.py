"""Spectral normalization: the weight divided by its largest singular value."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_bool, check_positive_int
from keras_tether.parametrize._base import (
    Parametrization,
    as_matrix,
    check_matrix_shape,
)

_TINY = 1e-30


def _unit(vector: Tensor) -> Tensor:
    return ops.multiply(vector, ops.rsqrt(ops.sum(ops.square(vector)) + _TINY))


@keras.saving.register_keras_serializable(package="keras_tether")
class SpectralNorm(Parametrization):
    """Divides a weight by its spectral norm, so that its largest singular value is 1.

    The weight is viewed as a matrix `(rows, columns)` (every axis but the
    last, times the last) and the map is `W = free / sigma(free)`, where
    `sigma` is the largest singular value. A layer with such a kernel is
    1-Lipschitz (in the flattened sense for convolutions), as in Lipschitz
    networks and GAN discriminators (Miyato et al., 2018).

    With `exact=True`, `sigma` comes from a singular value decomposition at
    every call: the constraint holds exactly. With `exact=False` (default),
    `sigma = ||free u||` for a unit vector `u` kept in a non-trainable
    variable `<weight>_u` of the `Parametrized` layer: each training call
    first runs `power_iterations` steps of the power iteration and stores the
    new `u`; inference calls use the stored `u` without changing it. Gradients
    flow through `sigma` with `u` held fixed. The state is an ordinary
    variable, so the behaviour is the same on every backend, in `fit` under
    `jit` and in `predict`, unlike `keras.layers.SpectralNormalization`,
    whose assignment of the normalized kernel is dropped by the stateless
    training step of the JAX backend.

    `right_inverse` returns `value / sigma(value)` and starts `u` at the exact
    top right singular vector, so a kept weight is exact from the first call.

    Args:
        power_iterations: Positive integer, the power-iteration steps per
            training call. Defaults to `1`.
        exact: Boolean, whether to compute `sigma` exactly by SVD at every
            call instead. Defaults to `False`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> spectral = parametrize.SpectralNorm(exact=True)
    >>> weight = spectral(np.array([[3.0, 0.0], [0.0, 1.5]]))
    >>> print(keras.ops.convert_to_numpy(weight))
    [[1.  0. ]
     [0.  0.5]]

    References:
        - [Miyato et al., 2018. Spectral normalization for generative
          adversarial networks](https://arxiv.org/abs/1802.05957)
    """

    def __init__(self, power_iterations: int = 1, exact: bool = False) -> None:
        super().__init__()
        self.power_iterations = check_positive_int(power_iterations, "power_iterations")
        self.exact = check_bool(exact, "exact")
        self.u = None

    def build(self, shape: Shape, add_weight) -> None:
        shape = tuple(shape)
        check_matrix_shape(shape, "SpectralNorm")
        if not self.exact:
            self.u = add_weight(
                name="u",
                shape=(shape[-1],),
                initializer=keras.initializers.RandomNormal(seed=0),
                trainable=False,
            )
        super().build(shape, add_weight)

    def sigma(self, free: Tensor) -> Tensor:
        """The spectral norm estimate that `__call__` divides by."""
        matrix = as_matrix(free)
        if self.exact:
            singular_values = ops.svd(matrix, compute_uv=False)
            return ops.max(singular_values)
        u = ops.stop_gradient(_unit(ops.cast(self.u, matrix.dtype)))
        return ops.sqrt(ops.sum(ops.square(ops.matmul(matrix, u))) + _TINY)

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        return ops.divide(free, self.sigma(free))

    def update(self, free: Tensor) -> None:
        if self.exact:
            return
        matrix = ops.stop_gradient(as_matrix(free))
        u = _unit(ops.cast(self.u, matrix.dtype))
        for _ in range(self.power_iterations):
            v = _unit(ops.matmul(matrix, u))
            u = _unit(ops.matmul(v, matrix))
        self.u.assign(ops.cast(u, self.u.dtype))

    def right_inverse(self, value: Tensor) -> Tensor:
        matrix = np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
        flat = matrix.reshape(-1, matrix.shape[-1])
        _, singular_values, right = np.linalg.svd(flat, full_matrices=False)
        if self.u is not None:
            self.u.assign(right[0].astype("float32"))
        return ops.convert_to_tensor(matrix / singular_values[0], "float32")

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        return self.right_inverse(keras.random.normal(tuple(shape), seed=seed))

    def get_config(self) -> dict[str, Any]:
        return {"power_iterations": self.power_iterations, "exact": self.exact}
