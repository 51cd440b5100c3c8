"""Backend-free type aliases, so signatures are typed without importing a backend."""

from collections.abc import Sequence
from typing import Any

Tensor = Any
"""A tensor of the active Keras backend (or a NumPy array where accepted)."""

Shape = Sequence[int | None]
"""A tensor shape; `None` marks an unknown dimension."""
