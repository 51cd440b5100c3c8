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


def seed_data(
    batch: int, features: int, branches: int, classes: int, rng: np.random.Generator
) -> tuple[list, object]:
    """The seed question's data: one input per branch and one-hot labels."""
    x = tensors([random((batch, features), rng) for _ in range(branches)])
    labels = rng.integers(0, classes, size=batch)
    (y,) = tensors([np.eye(classes, dtype="float32")[labels]])
    return x, y
