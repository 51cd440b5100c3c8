"""Reuse of parametrized values within one computation: `parametrize.cached()`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
from keras import ops

from keras_tether._types import Tensor

# One stack of caches per thread: a value computed in one thread (or in one
# thread's trace) is never seen by another.
_STATE = threading.local()


@contextlib.contextmanager
def cached() -> Iterator[None]:
    """Computes each parametrized weight once, however often it is read.

    Inside the block, the first read of a weight of a
    `keras_tether.layers.Parametrized` layer computes `P(free)`, and later
    reads of the same weight reuse that value: a parametrized
    `ReversibleDense` called forward and in reverse computes its constrained
    kernel once, and so does a layer that reads a parametrized weight several
    times per call. (Within one call of the `Parametrized` layer itself, `P`
    already runs once, with or without this block.)

    Use it around one computation, eagerly or inside a function being
    compiled, as with `torch.nn.utils.parametrize.cached`. A value is reused
    only while every variable it was computed from reads as the very same
    tensor, unchanged, so it is never reused after an optimizer step or an
    assignment, nor outside the trace (JAX, `tf.function`) that computed it.
    On JAX, and on PyTorch (whose in-place updates are counted), reads
    within one step are the same tensor and the value is reused; TensorFlow
    shows no such identity of a variable's value, so there the block changes
    nothing and `P` runs at every read. Caches belong to the thread that
    opened them; blocks nest, and an inner block starts empty.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import layers, parametrize
    >>> dense = layers.ReversibleDense(3)
    >>> wrapper = layers.Parametrized(dense, {"kernel": parametrize.Orthogonal()})
    >>> x = np.ones((2, 5), dtype="float32")
    >>> with parametrize.cached():
    ...     y = wrapper(wrapper(x), reverse=True)  # one kernel computation
    >>> tuple(y.shape)
    (2, 5)
    """
    stack = _stack()
    stack.append({})
    try:
        yield
    finally:
        stack.pop()


def _stack() -> list[dict]:
    stack = getattr(_STATE, "stack", None)
    if stack is None:
        stack = _STATE.stack = []
    return stack


def _token(variables: Sequence[Any]) -> tuple | None:
    """What a value computed now was computed from: each read and its version.

    `None` where a read is itself a mutable variable (TensorFlow's), whose
    identity says nothing about its value.
    """
    reads = [ops.convert_to_tensor(v) for v in variables]
    if any(hasattr(read, "assign") for read in reads):
        return None
    # PyTorch updates variables in place and counts each update in the
    # tensor's `_version` (private; see docs/private-api.md). Without that
    # count an update could not be told apart, so nothing is reused.
    versions = [getattr(read, "_version", None) for read in reads]
    if keras.backend.backend() == "torch" and None in versions:
        return None
    return tuple(zip(reads, versions, strict=True))


def _same(token: tuple, other: tuple) -> bool:
    return len(token) == len(other) and all(
        a is b and version == other_version
        for (a, version), (b, other_version) in zip(token, other, strict=True)
    )


def _differentiable(value: Tensor, token: tuple) -> bool:
    """False for a PyTorch value computed without gradients from a trained read.

    Such a value (from `predict`, under `torch.no_grad`) would cut the
    gradient of a later training step that reused it.
    """
    needs_gradient = any(getattr(read, "requires_grad", False) for read, _ in token)
    return not needs_gradient or getattr(value, "requires_grad", True)


def compute_cached(
    key: Any, variables: Sequence[Any], compute: Callable[[], Tensor]
) -> Tensor:
    """`compute()`, or its value from the innermost `cached()` block if still valid.

    Args:
        key: Hashable object identifying the weight.
        variables: Every variable the value depends on.
        compute: Function computing the value from those variables.
    """
    stack = _stack()
    if not stack:
        return compute()
    cache = stack[-1]
    token = _token(variables)
    if token is None:
        return compute()
    entry = cache.get(key)
    if (
        entry is not None
        and _same(entry[0], token)
        and _differentiable(entry[1], token)
    ):
        return entry[1]
    value = compute()
    cache[key] = (token, value)
    return value
