"""EfficientDet's fast normalized fusion: ReLU weights divided by their sum."""

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._types import Tensor
from keras_tether._validation import check_axis, check_non_negative_number
from keras_tether.simplex._base import SimplexMap
from keras_tether.simplex._ops import prepare_logits


def relu_normalized(
    logits: Tensor,
    axis: int = -1,
    epsilon: float = 1e-4,
    mask: Tensor | None = None,
) -> Tensor:
    """ReLU of `logits` divided by epsilon plus their sum along `axis`.

    The weights are `w_i = relu(a_i) / (epsilon + sum_j relu(a_j))`, the fast
    normalized fusion of EfficientDet: cheaper than a softmax, with exact
    zeros for negative logits. As in EfficientDet, the weights are not
    renormalized: they sum to `s / (epsilon + s)` with `s = sum_j relu(a_j)`,
    which is 1 only when `epsilon` is 0 and otherwise falls short of 1 by
    about `epsilon / s`. They are always non-negative and sum to at most 1.

    When every `relu(a_i)` along the axis is 0 the formula would give all-zero
    weights; uniform weights are returned instead, so that the output of a
    mixture never vanishes. Their gradient is zero, as that of ReLU at
    negative logits, so logits that are all non-positive stay there.

    Args:
        logits: Tensor of any float dtype; computed in float32.
        axis: Integer, the axis along which the weights are normalized.
        epsilon: Non-negative number added to the denominator; EfficientDet
            uses 1e-4.
        mask: Optional boolean tensor broadcastable to `logits`. False entries
            get weight exactly 0 and take no part in the sum. A slice that is
            masked entirely is treated as unmasked.

    Returns:
        A float32 tensor of the shape of `logits`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> weights = simplex.relu_normalized(np.array([3.0, 1.0, -2.0]), epsilon=0.0)
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.75 0.25 0.  ]
    >>> weights = simplex.relu_normalized(np.array([-1.0, -2.0]))
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.5 0.5]

    References:
        - [Tan, Pang and Le, 2020. EfficientDet: Scalable and Efficient Object
          Detection](https://arxiv.org/abs/1911.09070)
    """
    axis = check_axis(axis)
    epsilon = check_non_negative_number(epsilon, "epsilon")
    logits, keep = prepare_logits(logits, axis, mask)
    if keep is None:
        kept = ops.ones_like(logits)
        rectified = ops.relu(logits)
    else:
        kept = ops.cast(keep, "float32")
        rectified = ops.where(keep, ops.relu(logits), 0.0)
    total = ops.sum(rectified, axis=axis, keepdims=True)
    has_mass = total > 0
    # `where` differentiates both branches, so the unused denominator is made
    # 1 rather than 0: otherwise 0 / 0 would put NaN into the gradient.
    denominator = ops.where(has_mass, total + epsilon, 1.0)
    uniform = kept / ops.sum(kept, axis=axis, keepdims=True)
    # A NaN total (see `prepare_logits`) must not pass for "no mass".
    uniform = ops.where(ops.isnan(total), float("nan"), uniform)
    return ops.where(has_mass, rectified / denominator, uniform)


@keras.saving.register_keras_serializable(package="keras_tether")
class ReluNormalized(SimplexMap):
    """Maps logits to the simplex with EfficientDet's fast normalized fusion.

    See `keras_tether.simplex.relu_normalized` for the map itself, and for
    why its weights sum to slightly less than 1. `inverse` returns `n * w`,
    `n` the length of the axis, so that uniform weights give the all-ones
    logits with which EfficientDet starts; the map sends them back to
    `w * n / (n + epsilon)`, within a relative `epsilon / n` of `w`. Zero
    weights are allowed; a zero logit has zero ReLU gradient, so that branch
    stays off.

    Args:
        epsilon: Non-negative number added to the denominator. Defaults to
            1e-4, as in EfficientDet.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> simplex_map = simplex.ReluNormalized()
    >>> logits = simplex_map.inverse([0.5, 0.25, 0.25])
    >>> print(np.round(logits, 3))
    [1.5  0.75 0.75]
    >>> print(np.round(keras.ops.convert_to_numpy(simplex_map(logits)), 3))
    [0.5  0.25 0.25]

    References:
        - [Tan, Pang and Le, 2020. EfficientDet: Scalable and Efficient Object
          Detection](https://arxiv.org/abs/1911.09070)
    """

    name = "relu_normalized"

    def __init__(self, epsilon: float = 1e-4) -> None:
        self.epsilon = check_non_negative_number(epsilon, "epsilon")

    def __call__(
        self,
        logits: Tensor,
        axis: int = -1,
        training: bool = False,
        seed: int | keras.random.SeedGenerator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return relu_normalized(logits, axis=axis, epsilon=self.epsilon, mask=mask)

    def _inverse(self, weights: np.ndarray, axis: int) -> np.ndarray:
        return weights * weights.shape[axis]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
