"""Weights whose slices lie on the probability simplex."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether import simplex as simplex_maps
from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_axis
from keras_tether.parametrize._base import Parametrization


def _project_onto_simplex(values: np.ndarray, axis: int) -> np.ndarray:
    """The Euclidean projection of each slice along `axis` onto the simplex."""
    moved = np.moveaxis(values, axis, -1)
    ordered = -np.sort(-moved, axis=-1)
    cumulative = np.cumsum(ordered, axis=-1) - 1.0
    ranks = np.arange(1, moved.shape[-1] + 1)
    support = ordered - cumulative / ranks > 0
    count = support.sum(axis=-1, keepdims=True)
    threshold = np.take_along_axis(cumulative, count - 1, axis=-1) / count
    return np.moveaxis(np.maximum(moved - threshold, 0.0), -1, axis)


@keras.saving.register_keras_serializable(package="keras_tether")
class Simplex(Parametrization):
    """Puts every slice of a weight along `axis` on the probability simplex.

    Each slice is non-negative and sums to 1: `W = map(free, axis)`, with a
    map of `keras_tether.simplex` (softmax by default; sparsemax or entmax-1.5
    allow exact zeros). For a `Dense` kernel `(input_dim, units)`, `axis=0`
    makes every unit a convex combination of its inputs, and `axis=-1` makes
    every input's row a distribution over the units.

    `right_inverse` uses the map's own `inverse`; a value off the simplex is
    first projected onto it (Euclidean projection), and for maps that never
    output an exact zero, mixed with 1% of the uniform distribution.
    `sample` draws slices uniformly on the simplex (Dirichlet(1)).

    Args:
        axis: Integer, the axis along which the weights sum to 1. Defaults to
            `-1`.
        simplex: A deterministic simplex map: a name (`"softmax"`, `"sparsemax"`,
            `"entmax15"`, `"relu_normalized"`), a config or a
            `keras_tether.simplex.SimplexMap`. Defaults to `"softmax"`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> rows = parametrize.Simplex(axis=-1, simplex="sparsemax")
    >>> weight = rows(np.array([[2.0, 0.0, -1.0], [0.3, 0.1, 0.0]]))
    >>> print(np.round(keras.ops.convert_to_numpy(weight), 3))
    [[1.  0.  0. ]
     [0.5 0.3 0.2]]
    """

    def __init__(self, axis: int = -1, simplex: Any = "softmax") -> None:
        super().__init__()
        self.axis = check_axis(axis)
        self.simplex = simplex_maps.get(simplex)
        if isinstance(self.simplex, simplex_maps.GumbelSoftmax):
            raise ValueError(
                "Received an invalid value for `simplex`, expected a deterministic "
                "simplex map: a parametrized weight must not change from one "
                f"call to the next. Received: simplex={simplex!r}"
            )

    def build(self, shape: Shape, add_weight) -> None:
        rank = len(shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"Received an invalid value for `axis`, expected an axis of a "
                f"weight with {rank} dimension(s). Received: axis={self.axis}"
            )
        super().build(shape, add_weight)

    def __call__(self, free: Tensor) -> Tensor:
        free = ops.convert_to_tensor(free)
        return ops.cast(self.simplex(free, axis=self.axis), free.dtype)

    def right_inverse(self, value: Tensor) -> Tensor:
        weights = np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
        try:
            return ops.convert_to_tensor(self.simplex.inverse(weights, self.axis))
        except ValueError:
            pass
        projected = _project_onto_simplex(weights, self.axis)
        try:
            return ops.convert_to_tensor(self.simplex.inverse(projected, self.axis))
        except ValueError:
            size = weights.shape[self.axis]
            mixed = 0.99 * projected + 0.01 / size
            return ops.convert_to_tensor(self.simplex.inverse(mixed, self.axis))

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        uniform = keras.random.uniform(tuple(shape), 1e-7, 1.0, seed=seed)
        exponential = ops.negative(ops.log(uniform))
        total = ops.sum(exponential, axis=self.axis, keepdims=True)
        return self.right_inverse(ops.divide(exponential, total))

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis, "simplex": simplex_maps.serialize(self.simplex)}
