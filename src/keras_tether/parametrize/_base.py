"""The base class of parametrizations, and their look-up by name or config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_axis


class Parametrization:
    """Base class of the maps from free parameters to a constrained weight.

    A parametrization `P` turns an unconstrained tensor, the free parameter,
    into a weight that lies in a set by construction: `P(free)` is orthogonal,
    positive, of unit norm, ... whatever `free` is. Wrapped around a layer by
    `keras_tether.layers.Parametrized`, the layer computes with `P(free)`, the
    optimizer updates `free`, and gradients flow through `P`.

    Subclasses implement `__call__(free)`, and where the map can be inverted
    `right_inverse(value)`: a free parameter that `P` sends to `value` (after
    projecting `value` onto the set if it lies outside), so that wrapping a
    layer keeps its current weight. `sample(shape, seed)` draws a free
    parameter whose image is a natural random point of the set. A
    parametrization that needs variables of its own (a learned magnitude, the
    state of a power iteration) creates them in `build` through the
    `add_weight` function it is given; such variables belong to the
    `Parametrized` layer, which saves them. `update(free)` runs once per
    training call, before `__call__`, for state that advances during training.

    By default the free parameter has the shape of the weight and is the
    layer's own variable. A parametrization whose free parameters have other
    shapes (the two factors of `LowRank`) returns them from
    `free_shapes(shape)`, a dict mapping names to shapes; `Parametrized` then
    creates one variable per entry, named `<weight>_<name>`, and `__call__`,
    `update`, `right_inverse` and `sample` take or return dicts of tensors
    with those keys.

    `__call__` receives the free parameter as a tensor in the variable dtype
    (float32 under mixed precision) and must use `keras.ops` only, so it runs
    under `jit` on every backend. Register your own subclass with
    `keras.saving.register_keras_serializable` and give it a `get_config`, so
    that models holding it load with `safe_mode=True`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import parametrize
    >>> @keras.saving.register_keras_serializable(package="my_project")
    ... class Negative(parametrize.Parametrization):
    ...     def __call__(self, free):
    ...         return -keras.ops.exp(free)
    ...     def right_inverse(self, value):
    ...         return keras.ops.log(-value)
    >>> p = Negative()
    >>> free = p.right_inverse(np.array([-2.0, -0.5]))
    >>> print(np.round(keras.ops.convert_to_numpy(p(free)), 3))
    [-2.  -0.5]
    """

    def __init__(self) -> None:
        self._built_shape: tuple[int, ...] | None = None

    @property
    def built(self) -> bool:
        """Whether `build` has run (the parametrization belongs to a weight)."""
        return getattr(self, "_built_shape", None) is not None

    def build(self, shape: Shape, add_weight: Callable[..., Any]) -> None:
        """Checks `shape` and creates the parametrization's own variables.

        Args:
            shape: Tuple of integers, the shape of the parametrized weight.
            add_weight: A function with the signature of
                `keras.layers.Layer.add_weight` that creates a variable owned
                by the `Parametrized` layer.
        """
        self._built_shape = tuple(shape)

    def free_shapes(self, shape: Shape) -> dict[str, tuple[int, ...]] | None:
        """The names and shapes of the free parameters of a weight of `shape`.

        Returns `None` (the default) when the free parameter is one tensor of
        the weight's own shape, stored in the layer's own variable.
        """
        return None

    def __call__(self, free: Tensor) -> Tensor:
        """Returns the constrained weight `P(free)`."""
        raise NotImplementedError(
            f"`{type(self).__name__}` must implement `__call__`, as every "
            "`Parametrization` subclass does."
        )

    def right_inverse(self, value: Tensor) -> Tensor:
        """Returns a free parameter that `__call__` maps to `value`.

        A `value` outside the set is first projected onto it. Parametrizations
        with variables of their own set them here too.
        """
        raise NotImplementedError(
            f"`{type(self).__name__}` has no `right_inverse`, so it cannot keep "
            "a layer's current weight. Pass `initial='sample'` to "
            "`Parametrized`, or implement `right_inverse`."
        )

    def sample(self, shape: Shape, seed: Any = None) -> Tensor:
        """Returns a random free parameter; its image is a random point of the set.

        The default draws standard normal entries.
        """
        return keras.random.normal(tuple(shape), seed=seed)

    def update(self, free: Tensor) -> None:
        """Advances the parametrization's state; runs once per training call."""

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Parametrization:
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(
            f"{key}={value!r}" for key, value in self.get_config().items()
        )
        return f"{type(self).__name__}({arguments})"


def serialize(parametrization: Parametrization) -> dict[str, Any]:
    """Returns the config dict of a parametrization, as Keras saves it.

    Args:
        parametrization: A `Parametrization`.

    Returns:
        A JSON-compatible dict that `deserialize` turns back into an equal
        parametrization (without its variables).

    Raises:
        ValueError: If the class is not registered with
            `keras.saving.register_keras_serializable` (nor given in a
            `keras.saving.custom_object_scope`), or if `from_config` cannot
            rebuild it from its `get_config`.

    Example:

    >>> from keras_tether import parametrize
    >>> config = parametrize.serialize(parametrize.UnitNorm(axis=-1))
    >>> config["registered_name"], config["config"]
    ('keras_tether>UnitNorm', {'axis': -1})
    """
    if not isinstance(parametrization, Parametrization):
        raise TypeError(
            "Expected `parametrization` to be a `Parametrization`. "
            f"Received: parametrization={parametrization!r} of type "
            f"{type(parametrization).__name__}"
        )
    cls = type(parametrization)
    if (
        keras.saving.get_registered_object(keras.saving.get_registered_name(cls))
        is not cls
    ):
        raise ValueError(
            f"The parametrization class `{cls.__qualname__}` is not registered, "
            "so a saved model could not be loaded (with `safe_mode=True` or in "
            "another process). Decorate it with "
            '`@keras.saving.register_keras_serializable(package="...")`.'
        )
    try:
        cls.from_config(parametrization.get_config())
    except Exception as error:
        raise ValueError(
            f"`{cls.__qualname__}.from_config(get_config())` fails, so a saved "
            "model could not be loaded: give the class a `get_config` that "
            "returns its constructor arguments. The error was: "
            f"{type(error).__name__}: {error}"
        ) from error
    return keras.saving.serialize_keras_object(parametrization)


def deserialize(config: dict[str, Any]) -> Parametrization:
    """Returns the parametrization described by a config dict.

    Args:
        config: A dict as returned by `serialize`. Classes outside
            keras-tether must be registered with
            `keras.saving.register_keras_serializable`.

    Returns:
        A new, unbuilt `Parametrization`.

    Example:

    >>> from keras_tether import parametrize
    >>> parametrize.deserialize(parametrize.serialize(parametrize.Positive()))
    Positive(function='softplus', minimum=0.001, floor=1e-07)
    """
    if not isinstance(config, dict):
        raise TypeError(
            "Expected `config` to be a dict, as returned by `serialize`. "
            f"Received: config={config!r} of type {type(config).__name__}"
        )
    parametrization = keras.saving.deserialize_keras_object(config)
    if not isinstance(parametrization, Parametrization):
        raise ValueError(
            "Received an invalid value for `config`, expected the config of a "
            f"`Parametrization`. Received: config={config!r}"
        )
    return parametrization


def check_axes(axis: Any, name: str = "axis") -> int | tuple[int, ...] | None:
    """Returns `axis` (None, an integer or a tuple of integers), validated."""
    if axis is None:
        return None
    if isinstance(axis, list | tuple):
        if not axis:
            raise ValueError(
                f"Received an invalid value for `{name}`, expected a non-empty "
                f"list of axes. Received: {name}={axis!r}"
            )
        return tuple(check_axis(a) for a in axis)
    return check_axis(axis)


def reduction_axes(axis: int | tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    """The axes a norm reduces: `axis`, or every axis but the last when None."""
    if axis is None:
        return tuple(range(rank - 1)) if rank > 1 else (0,)
    axes = axis if isinstance(axis, tuple) else (axis,)
    normalized = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(
                f"Received an invalid value for `axis`, expected an axis of a "
                f"weight with {rank} dimension(s). Received: axis={axis!r}"
            )
        normalized.append(a % rank)
    return tuple(sorted(set(normalized)))


def as_matrix(value: Tensor) -> Tensor:
    """Flattens every axis but the last: a `(rows, columns)` matrix."""
    return ops.reshape(value, (-1, value.shape[-1]))


def check_matrix_shape(shape: tuple[int, ...], who: str) -> None:
    if len(shape) < 2:
        raise ValueError(
            f"`{who}` needs a weight with at least 2 dimensions. "
            f"Received: a weight of shape={shape}"
        )


def check_square_shape(shape: tuple[int, ...], who: str) -> None:
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(
            f"`{who}` needs a weight whose last two dimensions are equal "
            f"(square matrices). Received: a weight of shape={shape}"
        )
