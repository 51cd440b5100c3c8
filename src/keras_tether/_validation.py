"""Argument checks shared by the whole package; each error names the argument.

One policy: a value of the wrong type raises `TypeError`, a value of the right
type but out of range raises `ValueError`, both in Keras' wording
("... Received: name=value").
"""

import math
import numbers
from collections.abc import Sequence

import keras
import numpy as np

# Weights given to `inverse` may come from a float16 source or a hand-typed
# list, so their sum is only checked to this tolerance.
_SUM_TOLERANCE = 1e-3


def check_number(value: object, name: str) -> float:
    """Returns `value` as a Python float, or raises `TypeError` naming `name`."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Expected `{name}` to be a number. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return float(value)


def check_positive_number(value: object, name: str) -> float:
    """Returns `value` as a float if it is a positive finite number."""
    number = check_number(value, name)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a positive "
            f"number. Received: {name}={value}"
        )
    return number


# Below float32's smallest normal number, CPUs may flush a temperature to 0.
_SMALLEST_TEMPERATURE = float(np.finfo(np.float32).tiny)


def check_temperature(value: object, name: str = "temperature") -> float:
    """Returns `value` as a float if it is a usable float32 temperature."""
    number = check_positive_number(value, name)
    if number < _SMALLEST_TEMPERATURE:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a positive "
            f"number of at least {_SMALLEST_TEMPERATURE:.4g} (float32's smallest "
            f"normal number; smaller ones act as 0). Received: {name}={value}"
        )
    return number


def check_non_negative_number(value: object, name: str) -> float:
    """Returns `value` as a float if it is a non-negative finite number."""
    number = check_number(value, name)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a non-negative "
            f"number. Received: {name}={value}"
        )
    return number


def check_bool(value: object, name: str) -> bool:
    """Returns `value` as a Python bool, or raises `TypeError` naming `name`."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"Expected `{name}` to be a boolean. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return bool(value)


def check_int(value: object, name: str) -> int:
    """Returns `value` as a Python int, or raises `TypeError` naming `name`."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Expected `{name}` to be an integer. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return int(value)


def check_positive_int(value: object, name: str) -> int:
    """Returns `value` as a Python int if it is an integer greater than zero."""
    number = check_int(value, name)
    if number <= 0:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a positive "
            f"integer. Received: {name}={value!r}"
        )
    return number


def check_axis(value: object) -> int:
    """Returns `value` as a Python int, or raises `TypeError` naming `axis`."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            "Expected `axis` to be an integer. "
            f"Received: axis={value!r} of type {type(value).__name__}"
        )
    return int(value)


def _describe(array: np.ndarray) -> str:
    return np.array2string(array, separator=", ", threshold=20)


def check_simplex_weights(weights: np.ndarray, axis: int) -> None:
    """Raises `ValueError` unless `weights` lie on the simplex along `axis`."""
    if weights.ndim == 0:
        raise ValueError(
            "Received an invalid value for `weights`, expected an array with at "
            f"least one dimension. Received: weights={_describe(weights)}"
        )
    if not -weights.ndim <= axis < weights.ndim:
        raise ValueError(
            f"Received an invalid value for `axis`, expected an axis of `weights`, "
            f"which has {weights.ndim} dimension(s). Received: axis={axis}"
        )
    sums = weights.sum(axis=axis)
    if (
        not np.all(np.isfinite(weights))
        or np.any(weights < 0)
        or np.any(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    ):
        raise ValueError(
            "Received an invalid value for `weights`, expected non-negative "
            f"numbers that sum to 1 along axis {axis}. "
            f"Received: weights={_describe(weights)}"
        )


def check_positive_weights(weights: np.ndarray, map_name: str) -> None:
    """Raises `ValueError` if `weights` has a zero the map cannot produce."""
    if np.any(weights == 0):
        raise ValueError(
            f"Received an invalid value for `weights`: the `{map_name}` map "
            "never outputs an exact zero, so every weight must be positive. "
            f"Received: weights={_describe(weights)}"
        )


def check_string(value: object, name: str) -> str:
    """Returns `value` if it is a string, or raises `TypeError` naming `name`."""
    if not isinstance(value, str):
        raise TypeError(
            f"Expected `{name}` to be a string. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return value


def check_choice(value: object, choices: Sequence[str], name: str) -> str:
    """Returns `value` if it is one of the strings `choices`."""
    check_string(value, name)
    if value not in choices:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected one of "
            f"{tuple(choices)}. Received: {name}={value!r}"
        )
    return value


def check_instance(value: object, types: type | tuple, name: str, expected: str):
    """Returns `value` if it is an instance of `types`, described as `expected`."""
    if not isinstance(value, types):
        raise TypeError(
            f"Expected `{name}` to be {expected}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return value


def check_optional_int(value: object, name: str) -> int | None:
    """Returns `value` as a Python int, or `None` if it is `None`."""
    return None if value is None else check_int(value, name)


def check_axis_in_range(axis: int, rank: int, of: str) -> int:
    """Returns `axis` if it is an axis of a tensor `of` of rank `rank`."""
    if not -rank <= axis < rank:
        raise ValueError(
            f"Received an invalid value for `axis`, expected an axis of `{of}`, "
            f"which has {rank} dimension(s), in [{-rank}, {rank - 1}]. "
            f"Received: axis={axis}"
        )
    return axis


def check_broadcastable(shape: tuple, target: tuple, name: str, of: str) -> None:
    """Raises `ValueError` unless `shape` broadcasts to the shape `target`."""
    fits = len(shape) <= len(target) and all(
        a is None or b is None or a in (1, b)
        for a, b in zip(reversed(shape), reversed(target), strict=False)
    )
    if not fits:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a shape that "
            f"broadcasts to the shape {target} of `{of}`. "
            f"Received: {name} of shape {shape}"
        )


def get_keras_object(getter, value: object, name: str, kind: str):
    """`getter(value)` (such as `keras.initializers.get`), naming `name`.

    Keras' own message ("Could not interpret initializer identifier") names
    neither the argument nor what would do; this one does both.
    """
    try:
        return getter(value)
    except (ValueError, TypeError) as error:
        wrong_type = not isinstance(value, str | dict)
        raise (TypeError if wrong_type else ValueError)(
            f"Received an invalid value for `{name}`, expected {kind}. "
            f"Received: {name}={value!r}"
        ) from error


_IDENTIFIER_KINDS = (
    ("activation", keras.activations.get, "an activation"),
    ("initializer", keras.initializers.get, "an initializer"),
    ("regularizer", keras.regularizers.get, "a regularizer"),
    ("constraint", keras.constraints.get, "a constraint"),
)


def keras_identifiers(**arguments: object) -> dict[str, object]:
    """Resolves each Keras identifier argument by its name, naming it on error.

    Names ending in `activation`, `initializer`, `regularizer` or `constraint`
    go through the matching Keras `get`.
    """
    resolved = {}
    for name, value in arguments.items():
        for suffix, getter, kind in _IDENTIFIER_KINDS:
            if name.endswith(suffix):
                resolved[name] = get_keras_object(getter, value, name, kind)
                break
        else:
            raise ValueError(f"No Keras identifier kind for argument {name!r}")
    return resolved
