"""Sparsemax: the Euclidean projection onto the simplex."""

import keras
import numpy as np
from keras import ops

from keras_tether._types import Tensor
from keras_tether._validation import check_axis
from keras_tether.simplex._base import SimplexMap
from keras_tether.simplex._ops import (
    gradient_surrogate,
    prepare_logits,
    relative_to_max,
    sort_descending,
)

# Entries more than 1 below the maximum always get weight 0 (the threshold is
# at least max - 1), so the logits are clipped 2 below it.
_FLOOR = -2.0


def _sparsemax_threshold(logits: Tensor, axis: int) -> Tensor:
    ordered = sort_descending(logits, axis)
    rank = ops.cumsum(ops.ones_like(ordered), axis=axis)
    in_support = 1.0 + rank * ordered > ops.cumsum(ordered, axis=axis)
    support_size = ops.sum(ops.cast(in_support, "float32"), axis=axis, keepdims=True)
    support_sum = ops.sum(ops.where(in_support, ordered, 0.0), axis=axis, keepdims=True)
    return (support_sum - 1.0) / support_size


def sparsemax(logits: Tensor, axis: int = -1, mask: Tensor | None = None) -> Tensor:
    """Sparsemax of `logits` along `axis`: their projection onto the simplex.

    The weights are the point of the simplex closest to the logits `z` in
    Euclidean distance, `w_i = max(z_i - tau, 0)`, with the threshold `tau`
    chosen so that the weights sum to 1. Logits far enough below the largest
    get weight exactly 0, so a mixture can switch branches off entirely; the
    map is piecewise linear, and its gradient flows only through the
    branches that keep a positive weight.

    The threshold is found exactly by sorting the logits (Martins and
    Astudillo, 2016, Algorithm 1). `keras.ops.sparsemax` is not used: up to
    Keras 3.15.1 it is wrong whenever more than one entry keeps a weight
    (keras-team/keras#23425).

    Args:
        logits: Tensor of any float dtype; computed in float32.
        axis: Integer, the axis along which the weights sum to 1.
        mask: Optional boolean tensor broadcastable to `logits`. False entries
            get weight exactly 0 and the others still sum to 1. A slice that is
            masked entirely is treated as unmasked.

    Returns:
        A float32 tensor of the shape of `logits`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> weights = simplex.sparsemax(np.array([1.0, 0.8, -1.0]))
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.6 0.4 0. ]

    References:
        - [Martins and Astudillo, 2016. From Softmax to Sparsemax: A Sparse
          Model of Attention and Multi-Label Classification](
          https://arxiv.org/abs/1602.02068)
    """
    axis = check_axis(axis)
    logits, keep = prepare_logits(logits, axis, mask)
    clipped = relative_to_max(ops.stop_gradient(logits), keep, axis, _FLOOR)
    weights = ops.relu(clipped - _sparsemax_threshold(clipped, axis))
    support = ops.cast(weights > 0, "float32")
    return weights + gradient_surrogate(logits, support, axis)


@keras.saving.register_keras_serializable(package="keras_tether")
class Sparsemax(SimplexMap):
    """Maps logits to the simplex by Euclidean projection (sparsemax).

    See `keras_tether.simplex.sparsemax` for the map itself. Weights on the
    simplex are their own projection, so `inverse` returns them unchanged;
    zero weights are allowed.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> weights = simplex.Sparsemax()(np.array([[3.0, 1.0], [0.25, 0.0]]))
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [[1.    0.   ]
     [0.625 0.375]]

    References:
        - [Martins and Astudillo, 2016. From Softmax to Sparsemax: A Sparse
          Model of Attention and Multi-Label Classification](
          https://arxiv.org/abs/1602.02068)
    """

    name = "sparsemax"

    def __call__(
        self,
        logits: Tensor,
        axis: int = -1,
        training: bool = False,
        seed: int | keras.random.SeedGenerator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return sparsemax(logits, axis=axis, mask=mask)

    def _inverse(self, weights: np.ndarray, axis: int) -> np.ndarray:
        return weights
