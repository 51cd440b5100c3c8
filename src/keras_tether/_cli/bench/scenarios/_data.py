"""Inputs shared by the scenarios."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops


def tensors(arrays: Sequence[np.ndarray]) -> list:
    """Converts arrays to backend tensors once.

    A NumPy batch would be copied to the backend at every step.
    """
    return [ops.convert_to_tensor(array) for array in arrays]


def random(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard normal float32 values of `shape`."""
    return rng.standard_normal(shape).astype("float32")
