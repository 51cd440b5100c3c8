"""1.5-entmax: sparse weights between softmax and sparsemax."""

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

# Entries whose half-logit is more than 1 below the largest always get weight
# 0 (the threshold is at least that maximum minus 1), so half-logits are
# clipped 2 below it.
_FLOOR = -2.0


def _entmax15_threshold(half_logits: Tensor, axis: int) -> Tensor:
    ordered = sort_descending(half_logits, axis)
    rank = ops.cumsum(ops.ones_like(ordered), axis=axis)
    mean = ops.cumsum(ordered, axis=axis) / rank
    mean_of_squares = ops.cumsum(ordered * ordered, axis=axis) / rank
    # The k-th candidate solves sum_{j <= k} (x_(j) - tau)^2 = 1 over the k
    # largest entries; the discriminant is clamped because it is negative
    # exactly for candidates past the support, which are rejected below.
    discriminant = (1.0 - rank * (mean_of_squares - mean * mean)) / rank
    candidates = mean - ops.sqrt(ops.relu(discriminant))
    in_support = candidates <= ordered
    support_size = ops.sum(ops.cast(in_support, "int32"), axis=axis, keepdims=True)
    return ops.take_along_axis(candidates, support_size - 1, axis=axis)


def entmax15(logits: Tensor, axis: int = -1, mask: Tensor | None = None) -> Tensor:
    """1.5-entmax of `logits` along `axis`.

    The weights are `w_i = max(z_i / 2 - tau, 0)^2` for logits `z`, with the
    threshold `tau` chosen so that they sum to 1. Like sparsemax, logits far
    enough below the largest get weight exactly 0; unlike it, the weights are
    smooth where they are positive and fall to zero gradually, a middle way
    between softmax (dense) and sparsemax (piecewise linear). It is the
    alpha-entmax of Peters et al. (2019) with alpha = 1.5.

    The threshold is found exactly by sorting the logits (Peters et al.,
    2019, Algorithm 2), and the gradient is the analytic one, finite at ties
    and at the edge of the support.

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
    >>> weights = simplex.entmax15(np.array([1.0, 0.0, -3.0]))
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.831 0.169 0.   ]

    References:
        - [Peters, Niculae and Martins, 2019. Sparse Sequence-to-Sequence
          Models](https://arxiv.org/abs/1905.05702)
    """
    axis = check_axis(axis)
    logits, keep = prepare_logits(logits, axis, mask)
    half_logits = relative_to_max(ops.stop_gradient(logits) / 2.0, keep, axis, _FLOOR)
    roots = ops.relu(half_logits - _entmax15_threshold(half_logits, axis))
    return roots * roots + gradient_surrogate(logits, roots, axis)


@keras.saving.register_keras_serializable(package="keras_tether")
class Entmax15(SimplexMap):
    """Maps logits to the simplex with 1.5-entmax.

    See `keras_tether.simplex.entmax15` for the map itself. `inverse` returns
    `2 * sqrt(w)`, which the map sends back to `w` with threshold 0; zero
    weights are allowed.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> simplex_map = simplex.Entmax15()
    >>> logits = simplex_map.inverse([0.64, 0.36, 0.0])
    >>> print(np.round(logits, 3))
    [1.6 1.2 0. ]
    >>> print(np.round(keras.ops.convert_to_numpy(simplex_map(logits)), 3))
    [0.64 0.36 0.  ]

    References:
        - [Peters, Niculae and Martins, 2019. Sparse Sequence-to-Sequence
          Models](https://arxiv.org/abs/1905.05702)
    """

    name = "entmax15"

    def __call__(
        self,
        logits: Tensor,
        axis: int = -1,
        training: bool = False,
        seed: int | keras.random.SeedGenerator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return entmax15(logits, axis=axis, mask=mask)

    def _inverse(self, weights: np.ndarray, axis: int) -> np.ndarray:
        return 2.0 * np.sqrt(weights)
