"""Softmax with a temperature."""

from typing import Any

import keras
import numpy as np

from keras_tether._types import Tensor
from keras_tether._validation import (
    check_axis,
    check_positive_weights,
    check_temperature,
)
from keras_tether.simplex._base import SimplexMap
from keras_tether.simplex._ops import masked_softmax, prepare_logits


def softmax(
    logits: Tensor,
    axis: int = -1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Softmax of `logits / temperature` along `axis`.

    The weights are `w_i = exp(z_i / T) / sum_j exp(z_j / T)` for logits `z`
    and temperature `T`. They are always positive: every branch of a mixture
    keeps some weight. A small temperature sharpens them towards the largest
    logit, a large one flattens them towards uniform. The maximum is
    subtracted first, so extreme logits and tiny temperatures stay finite.

    Args:
        logits: Tensor of any float dtype; computed in float32.
        axis: Integer, the axis along which the weights sum to 1.
        temperature: Positive number, the temperature `T`.
        mask: Optional boolean tensor broadcastable to `logits`. False entries
            get weight exactly 0 and the others still sum to 1. A slice that is
            masked entirely is treated as unmasked.

    Returns:
        A float32 tensor of the shape of `logits`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> weights = simplex.softmax(np.array([1.0, 0.0, -1.0]), temperature=0.5)
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.867 0.117 0.016]
    >>> masked = simplex.softmax(
    ...     np.array([1.0, 0.0, -1.0]), mask=np.array([False, True, True])
    ... )
    >>> print(np.round(keras.ops.convert_to_numpy(masked), 3))
    [0.    0.731 0.269]

    References:
        - [Bridle, 1990. Probabilistic interpretation of feedforward
          classification network outputs](https://doi.org/10.1007/978-3-642-76153-9_28)
    """
    axis = check_axis(axis)
    temperature = check_temperature(temperature)
    logits, keep = prepare_logits(logits, axis, mask)
    return masked_softmax(logits, keep, axis, temperature)


def centered_log(weights: np.ndarray, axis: int) -> np.ndarray:
    """`log(weights)` minus its mean along `axis`: logits whose softmax is them."""
    log_weights = np.log(weights)
    return log_weights - log_weights.mean(axis=axis, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_tether")
class Softmax(SimplexMap):
    """Maps logits to the simplex with a softmax at a fixed temperature.

    See `keras_tether.simplex.softmax` for the map itself. `inverse` returns
    `T * log(w)`, centered along the axis; weights must be positive, since a
    softmax never outputs an exact zero.

    Args:
        temperature: Positive number, the temperature `T` that divides the
            logits. Defaults to 1.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> simplex_map = simplex.Softmax(temperature=2.0)
    >>> weights = simplex_map(np.array([2.0, 0.0]))
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.731 0.269]
    >>> print(np.round(simplex_map.inverse([0.731, 0.269]), 3))
    [ 1. -1.]

    References:
        - [Bridle, 1990. Probabilistic interpretation of feedforward
          classification network outputs](https://doi.org/10.1007/978-3-642-76153-9_28)
    """

    name = "softmax"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_temperature(temperature)

    def __call__(
        self,
        logits: Tensor,
        axis: int = -1,
        training: bool = False,
        seed: int | keras.random.SeedGenerator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return softmax(logits, axis=axis, temperature=self.temperature, mask=mask)

    def _inverse(self, weights: np.ndarray, axis: int) -> np.ndarray:
        check_positive_weights(weights, self.name)
        return self.temperature * centered_log(weights, axis)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config
