"""`EntropyRegularizer`: a penalty on the entropy of mixture weights."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_tether._types import Tensor
from keras_tether._validation import check_choice, check_non_negative_number

_TOWARD = ("sparse", "uniform")
_LOG_FLOOR = 1e-12


@keras.saving.register_keras_serializable(package="keras_tether")
class EntropyRegularizer(keras.regularizers.Regularizer):
    """Pushes mixture weights toward one branch or toward an even mix.

    The regularizer receives normalized weights `w` whose axis 0 runs over the
    `N` branches (shape `(N,)`, or `(N, features)` for per-feature mixtures)
    and measures the Shannon entropy `H(w) = -sum_i w_i log w_i` of each
    mixture. With `toward="sparse"` the penalty is `strength * H(w)`: it is
    smallest for a one-hot mixture, so the layer learns to pick few branches.
    With `toward="uniform"` the penalty is `strength * (log N - H(w))`, the
    Kullback-Leibler divergence from `w` to the uniform mixture: it is zero
    for equal weights and keeps every branch in play. Per-feature mixtures
    are averaged over the features. Zero weights (sparsemax, entmax) count as
    `0 log 0 = 0`.

    Args:
        strength: Non-negative float, the coefficient of the penalty.
        toward: String, `"sparse"` (minimize the entropy) or `"uniform"`
            (minimize the divergence from the uniform mixture).

    Example:

    >>> import numpy as np
    >>> from keras_tether.regularizers import EntropyRegularizer
    >>> regularizer = EntropyRegularizer(strength=1.0, toward="uniform")
    >>> float(regularizer(np.array([0.5, 0.5], "float32")))
    0.0
    >>> round(float(EntropyRegularizer(1.0)(np.array([0.5, 0.5]))), 4)
    0.6931
    """

    def __init__(self, strength: float = 0.01, toward: str = "sparse"):
        self.strength = check_non_negative_number(strength, "strength")
        self.toward = check_choice(toward, _TOWARD, "toward")

    def __call__(self, weights: Tensor) -> Tensor:
        weights = ops.cast(weights, "float32")
        if len(weights.shape) == 0:
            raise ValueError(
                "Expected `weights` with a branch axis first, shape `(N,)` or "
                "`(N, features)`. Received: weights of shape ()"
            )
        entropy = -ops.sum(weights * ops.log(ops.maximum(weights, _LOG_FLOOR)), axis=0)
        if self.toward == "uniform":
            penalty = math.log(weights.shape[0]) - entropy
        else:
            penalty = entropy
        return self.strength * ops.mean(penalty)

    def get_config(self) -> dict:
        return {"strength": self.strength, "toward": self.toward}
