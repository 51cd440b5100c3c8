"""The base class of the serializable simplex maps."""

from typing import Any, ClassVar

import keras
import numpy as np

from keras_tether._types import Tensor
from keras_tether._validation import check_axis, check_simplex_weights


class SimplexMap:
    """Base class of the maps from logits to weights on the probability simplex.

    A simplex map turns free parameters, the logits, into weights that are
    non-negative and sum to 1 along one axis, so that a layer can learn a
    mixture by plain gradient descent on unconstrained variables. Each map is
    a small serializable object: a layer holds one and stores it in its config.

    Calling a map returns float32 weights whatever the dtype of the logits.
    `inverse` goes the other way: it turns weights that a user gives, for
    example the initial weights of a mixture, into logits that the map sends
    back to those weights at inference.

    Subclasses set the class attribute `name`, implement `__call__` and
    `_inverse(weights, axis)` (NumPy float64 weights already checked to lie on
    the simplex), and extend `get_config` with their constructor arguments.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import simplex
    >>> simplex_map = simplex.get("sparsemax")
    >>> logits = simplex_map.inverse(np.array([0.7, 0.3, 0.0]))
    >>> weights = simplex_map(logits)
    >>> print(np.round(keras.ops.convert_to_numpy(weights), 3))
    [0.7 0.3 0. ]
    """

    name: ClassVar[str]

    def __call__(
        self,
        logits: Tensor,
        axis: int = -1,
        training: bool = False,
        seed: int | keras.random.SeedGenerator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Maps `logits` to weights on the simplex along `axis`.

        Args:
            logits: Tensor of any float dtype; computed in float32.
            axis: Integer, the axis along which the weights sum to 1.
            training: Boolean, whether the call is in training mode. Only
                stochastic maps (`GumbelSoftmax`) behave differently.
            seed: Integer or `keras.random.SeedGenerator`, the seed of
                stochastic maps in training; ignored by the others.
            mask: Optional boolean tensor broadcastable to `logits`. False
                entries get weight exactly 0 and the others still sum to 1. A
                slice that is masked entirely is treated as unmasked.

        Returns:
            A float32 tensor of the shape of `logits`.
        """
        raise NotImplementedError(
            f"`{type(self).__name__}` must implement `__call__`, as every "
            "`SimplexMap` subclass does."
        )

    def inverse(self, weights: Any, axis: int = -1) -> np.ndarray:
        """Returns logits that this map sends to `weights` at inference.

        Args:
            weights: Array-like of non-negative numbers that sum to 1 along
                `axis` (to within 1e-3).
            axis: Integer, the axis along which `weights` sum to 1.

        Returns:
            A NumPy float32 array of the shape of `weights`.

        Raises:
            ValueError: if `weights` do not lie on the simplex, or contain a
                zero that this map cannot produce.
        """
        axis = check_axis(axis)
        weights = np.asarray(keras.ops.convert_to_numpy(weights), dtype=np.float64)
        check_simplex_weights(weights, axis)
        return np.asarray(self._inverse(weights, axis), dtype=np.float32)

    def _inverse(self, weights: np.ndarray, axis: int) -> np.ndarray:
        raise NotImplementedError(
            f"`{type(self).__name__}` must implement `_inverse`, as every "
            "`SimplexMap` subclass does."
        )

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SimplexMap":
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(
            f"{key}={value!r}" for key, value in self.get_config().items()
        )
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SimplexMap):
            return NotImplemented
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))
