"""Gumbel-softmax, with the straight-through estimator for hard samples."""

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._types import Tensor
from keras_tether._validation import (
    check_axis,
    check_bool,
    check_positive_weights,
    check_temperature,
)
from keras_tether.simplex._base import SimplexMap
from keras_tether.simplex._ops import masked_softmax, one_hot_argmax, prepare_logits
from keras_tether.simplex._softmax import centered_log

_TINY = float(np.finfo(np.float32).tiny)
# The largest float32 below 1: a uniform draw rounded up to exactly 1 would
# give infinite noise.
_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
# With uniform draws in [_TINY, _BELOW_ONE], the Gumbel noise -log(-log(u))
# lies within [-4.47, 16.64]; an entry whose logit is more than the width of
# that range below another's can never win the argmax.
_NEVER_SAMPLED_GAP = 30.0


def _gumbel_noise(shape: Any, seed: int | keras.random.SeedGenerator | None) -> Tensor:
    uniform = keras.random.uniform(
        shape, minval=_TINY, maxval=1.0, dtype="float32", seed=seed
    )
    return -ops.log(-ops.log(ops.minimum(uniform, _BELOW_ONE)))


def gumbel_softmax(
    logits: Tensor,
    axis: int = -1,
    temperature: float = 1.0,
    hard: bool = True,
    training: bool = False,
    seed: int | keras.random.SeedGenerator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Gumbel-softmax sample along `axis`; deterministic at inference.

    In training, Gumbel noise `g_i = -log(-log(u_i))`, `u_i` uniform on
    (0, 1), is added to the logits `z`, and the relaxed sample is
    `y_soft = softmax((z + g) / T)`. Its argmax is an exact sample from the
    categorical distribution `softmax(z)` (the Gumbel-max trick), and as the
    temperature `T` goes to 0 `y_soft` tends to that one-hot sample. With
    `hard=True` the output is the one-hot sample itself, and its gradient is
    that of `y_soft` (the straight-through estimator): a mixture picks a
    single branch per step yet all logits learn.

    At inference (`training=False`) the output is deterministic: the one-hot
    vector of the largest logit if `hard`, else `softmax(z / T)`.

    Args:
        logits: Tensor of any float dtype; computed in float32.
        axis: Integer, the axis along which the weights sum to 1.
        temperature: Positive number, the temperature `T` of the relaxation.
        hard: Boolean, whether to output one-hot samples (straight-through)
            rather than relaxed ones.
        training: Boolean, whether to sample (True) or to return the
            deterministic inference output (False).
        seed: Integer or `keras.random.SeedGenerator`, the seed of the noise.
            An integer draws the same noise on every call; pass a
            `SeedGenerator` to draw fresh noise each time.
        mask: Optional boolean tensor broadcastable to `logits`. False entries
            get weight exactly 0 and are never sampled; the others still sum
            to 1. A slice that is masked entirely is treated as unmasked.

    Returns:
        A float32 tensor of the shape of `logits`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> logits = np.array([0.5, 2.0, 1.0])
    >>> print(keras.ops.convert_to_numpy(simplex.gumbel_softmax(logits)))
    [0. 1. 0.]
    >>> soft = simplex.gumbel_softmax(logits, temperature=2.0, hard=False)
    >>> print(np.round(keras.ops.convert_to_numpy(soft), 3))
    [0.227 0.481 0.292]
    >>> sample = simplex.gumbel_softmax(logits, training=True, seed=7)
    >>> print(keras.ops.convert_to_numpy(keras.ops.sum(sample)))
    1.0

    References:
        - [Jang, Gu and Poole, 2017. Categorical Reparameterization with
          Gumbel-Softmax](https://arxiv.org/abs/1611.01144)
        - [Maddison, Mnih and Teh, 2017. The Concrete Distribution: A
          Continuous Relaxation of Discrete Random Variables](
          https://arxiv.org/abs/1611.00712)
        - [Bengio, Léonard and Courville, 2013. Estimating or Propagating
          Gradients Through Stochastic Neurons for Conditional Computation](
          https://arxiv.org/abs/1308.3432)
    """
    axis = check_axis(axis)
    temperature = check_temperature(temperature)
    hard = check_bool(hard, "hard")
    logits, keep = prepare_logits(logits, axis, mask)
    if not training:
        if hard:
            return one_hot_argmax(logits, keep, axis)
        return masked_softmax(logits, keep, axis, temperature)
    noisy = logits + _gumbel_noise(ops.shape(logits), seed)
    soft = masked_softmax(noisy, keep, axis, temperature)
    if not hard:
        return soft
    # soft - stop_gradient(soft) is exactly 0, so the forward value is the
    # one-hot sample itself while the gradient is that of `soft`.
    return one_hot_argmax(noisy, keep, axis) + (soft - ops.stop_gradient(soft))


@keras.saving.register_keras_serializable(package="keras_tether")
class GumbelSoftmax(SimplexMap):
    """Maps logits to Gumbel-softmax samples in training.

    See `keras_tether.simplex.gumbel_softmax` for the map itself. It uses
    the `training` and `seed` call arguments; at inference it is
    deterministic.

    `inverse` depends on `hard`. If `hard=False` it returns `T * log(w)`,
    centered, which the map sends back to `w` at inference; weights must then
    be positive. If `hard=True` the inference output is always one-hot, so
    it returns `log(w)`, centered over the positive weights: training then
    samples each one-hot vector with probability `w`, and inference picks the
    largest weight. Zero weights are allowed there and get a logit so far
    below the others that they are never sampled.

    Args:
        temperature: Positive number, the temperature `T` of the relaxation.
            Defaults to 1.
        hard: Boolean, whether samples are one-hot (straight-through) rather
            than relaxed. Defaults to True.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> simplex_map = simplex.GumbelSoftmax(temperature=0.5, hard=False)
    >>> logits = simplex_map.inverse([0.2, 0.8])
    >>> print(np.round(keras.ops.convert_to_numpy(simplex_map(logits)), 3))
    [0.2 0.8]

    References:
        - [Jang, Gu and Poole, 2017. Categorical Reparameterization with
          Gumbel-Softmax](https://arxiv.org/abs/1611.01144)
        - [Maddison, Mnih and Teh, 2017. The Concrete Distribution: A
          Continuous Relaxation of Discrete Random Variables](
          https://arxiv.org/abs/1611.00712)
    """

    name = "gumbel_softmax"

    def __init__(self, temperature: float = 1.0, hard: bool = True) -> None:
        self.temperature = check_temperature(temperature)
        self.hard = check_bool(hard, "hard")

    def __call__(
        self,
        logits: Tensor,
        axis: int = -1,
        training: bool = False,
        seed: int | keras.random.SeedGenerator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return gumbel_softmax(
            logits,
            axis=axis,
            temperature=self.temperature,
            hard=self.hard,
            training=training,
            seed=seed,
            mask=mask,
        )

    def _inverse(self, weights: np.ndarray, axis: int) -> np.ndarray:
        if not self.hard:
            check_positive_weights(weights, self.name)
            return self.temperature * centered_log(weights, axis)
        positive = weights > 0
        log_weights = np.log(np.where(positive, weights, 1.0))
        count = positive.sum(axis=axis, keepdims=True)
        centered = log_weights - (
            np.where(positive, log_weights, 0.0).sum(axis=axis, keepdims=True) / count
        )
        lowest = np.where(positive, centered, np.inf).min(axis=axis, keepdims=True)
        return np.where(positive, centered, lowest - _NEVER_SAMPLED_GAP)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"temperature": self.temperature, "hard": self.hard})
        return config
