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
        name: String, the name configs will use. Registering the same
            function again under its name (a re-run notebook cell) is
            harmless; a different function under a taken name is an error.

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
    if not isinstance(name, str):
        raise TypeError(
            "Expected `name` to be a non-empty string. "
            f"Received: name={name!r} of type {type(name).__name__}"
        )
    if not name:
        raise ValueError(
            "Received an invalid value for `name`, expected a non-empty string. "
            "Received: name=''"
        )

    def decorator(fn: TransformFn) -> TransformFn:
        if not callable(fn):
            raise TypeError(f"Expected a callable transform. Received: {fn!r}")
        taken = _TRANSFORMS.get(name)
        if taken is not None and not _same_function(taken, fn):
            raise ValueError(
                f"A different transform is already registered as {name!r}: "
                f"{_describe(taken)}. Received: {_describe(fn)}. Register it "
                "under another name; names in saved configs must keep meaning "
                f"one function. Registered transforms: {sorted(_TRANSFORMS)}"
            )
        _TRANSFORMS[name] = fn
        return fn

    return decorator


def _same_function(a: TransformFn, b: TransformFn) -> bool:
    """Whether `b` is `a`, or the same definition run again (a re-run cell)."""
    if a is b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and code_a.co_code == code_b.co_code
        and code_a.co_consts == code_b.co_consts
    )


def _describe(fn: TransformFn) -> str:
    module = getattr(fn, "__module__", "?")
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


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
