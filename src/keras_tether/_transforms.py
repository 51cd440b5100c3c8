"""Named transforms that map a shared variable to the tensor a tied layer reads."""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

from keras_tether._types import Tensor

TransformFn = Callable[[Tensor], Tensor]

_TRANSFORMS: dict[str, TransformFn] = {}


def register_transform(name: str) -> Callable[[TransformFn], TransformFn]:
    """Registers a function under `name`, so ties can refer to it in configs.

    A transform receives the shared variable's value and returns the tensor
    the tied layer computes with. It must be built from `keras.ops` so that it
    runs on every backend and on symbolic tensors (used to infer shapes).
    Configs store the name only, which keeps `safe_mode=True` loading possible.

    Args:
        name: String, the name configs will use. Must not be registered yet.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Example:

    >>> import keras
    >>> from keras_tether import ties
    >>> @ties.register_transform("negate")
    ... def negate(w):
    ...     return -w
    >>> ties.get_transform("negate") is negate
    True
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            "Expected `name` to be a non-empty string. "
            f"Received: name={name!r} of type {type(name).__name__}"
        )
    if name in _TRANSFORMS:
        raise ValueError(
            f"A transform named {name!r} is already registered. "
            f"Registered transforms: {sorted(_TRANSFORMS)}"
        )

    def decorator(fn: TransformFn) -> TransformFn:
        if not callable(fn):
            raise TypeError(f"Expected a callable transform. Received: {fn!r}")
        _TRANSFORMS[name] = fn
        return fn

    return decorator


def get_transform(name: str) -> TransformFn:
    """Returns the transform registered under `name`.

    Args:
        name: String, a registered transform name (`"identity"`,
            `"transpose"`, or one added with `register_transform`).

    Returns:
        The transform function.
    """
    if not isinstance(name, str):
        raise TypeError(
            "Expected `transform` to be the name of a registered transform "
            f"(a string). Received: transform={name!r} of type "
            f"{type(name).__name__}"
        )
    if name not in _TRANSFORMS:
        raise ValueError(
            f"Unknown transform. Expected one of {sorted(_TRANSFORMS)}. "
            f"Received: transform={name!r}"
        )
    return _TRANSFORMS[name]


def registered_transforms() -> list[str]:
    """Returns the names of all registered transforms, sorted."""
    return sorted(_TRANSFORMS)


@register_transform("identity")
def identity(weight: Tensor) -> Tensor:
    return weight


@register_transform("transpose")
def transpose(weight: Tensor) -> Tensor:
    # Swap the last two axes only, so batched (stacked) weights also work.
    rank = len(weight.shape)
    if rank < 2:
        raise ValueError(
            "The `transpose` transform needs a weight of rank 2 or more. "
            f"Received a weight of shape {tuple(weight.shape)}"
        )
    axes = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ops.transpose(weight, axes)
