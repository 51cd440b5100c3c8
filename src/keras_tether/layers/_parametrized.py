"""A wrapper that makes a layer's weights functions of free parameters."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_tether import parametrize as parametrize_module
from keras_tether._keras_internals import set_parent_path, set_tracked
from keras_tether._validation import check_bool
from keras_tether.parametrize import Parametrization
from keras_tether.parametrize._cached import compute_cached

_INITIAL = ("keep", "sample")

# One subclass per (layer class, parametrized attribute names), made on first
# use: classes, not live objects, so the cache holds nothing a model owns.
_PARAMETRIZED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


class _WrapperHolder:
    """Holds the `Parametrized` wrapper out of sight of Keras' tracking."""

    __slots__ = ("wrapper",)

    def __init__(self, wrapper: Parametrized):
        self.wrapper = wrapper


def _parametrized_property(name: str) -> property:
    def get(layer):
        return layer._parametrized_holder.wrapper._value_for_layer(name)

    def set_(layer, value):
        raise AttributeError(
            f"Weight {name!r} of layer '{layer.name}' is parametrized, so it "
            "cannot be set. Assign the free parameter "
            f"(`Parametrized.free_weight({name!r})`) instead, or call "
            "`Parametrized.remove()` first."
        )

    return property(get, set_, doc=f"The parametrized value of `{name}`.")


class _AsBaseClass:
    """Gives `layer` its original class for the duration of a `with` block."""

    def __init__(self, layer: keras.layers.Layer):
        self.layer = layer
        self.parametrized = type(layer)

    def __enter__(self):
        self.layer.__class__ = self.parametrized._parametrized_base_class
        return self.layer

    def __exit__(self, *exc_info):
        self.layer.__class__ = self.parametrized


def _save_own_variables(layer, store):
    # The layer's own saving reads its weights by attribute: it must see its
    # variables (the free parameters), not the computed values. Variables set
    # aside for free parameters of another shape are saved as the computed
    # weight, so the layer's entries keep the plain layer's layout.
    wrapper = layer._parametrized_holder.wrapper
    for binding in wrapper._bindings.values():
        if binding.free is not None:
            binding.variable.assign(wrapper._compute(binding))
    with _AsBaseClass(layer) as plain, _SetAsideShown(wrapper):
        plain.save_own_variables(store)


def _load_own_variables(layer, store):
    wrapper = layer._parametrized_holder.wrapper
    with _AsBaseClass(layer) as plain, _SetAsideShown(wrapper):
        plain.load_own_variables(store)


def _set_aside(layer, variable) -> int:
    """Takes `variable` out of `layer`'s weights; returns where it was."""
    return set_tracked(layer, variable, None)


def _put_back(layer, variable, index: int) -> None:
    """Puts `variable` back among `layer`'s weights, where it was."""
    set_tracked(layer, variable, index)


class _SetAsideShown:
    """Shows the set-aside variables among the layer's own for a `with` block."""

    def __init__(self, wrapper):
        self.bindings = [b for b in wrapper._bindings.values() if b.free is not None]
        self.layer = wrapper.layer

    # Each index was taken after the earlier bindings' variables were set
    # aside, so they go back in the reverse order.
    def __enter__(self):
        for binding in reversed(self.bindings):
            _put_back(self.layer, binding.variable, binding.index)

    def __exit__(self, *exc_info):
        for binding in self.bindings:
            _set_aside(self.layer, binding.variable)


def _parametrized_class(cls: type, names: tuple[str, ...]) -> type:
    key = (cls, names)
    if key not in _PARAMETRIZED_CLASSES:
        namespace = {name: _parametrized_property(name) for name in names}
        namespace.update(
            save_own_variables=_save_own_variables,
            load_own_variables=_load_own_variables,
        )
        # The subclass keeps the name of the class it extends, so messages and
        # summaries read as before; it is never serialized (see `get_config`).
        namespace.update(
            __module__=cls.__module__,
            __qualname__=cls.__qualname__,
            _parametrized_base_class=cls,
        )
        _PARAMETRIZED_CLASSES[key] = type(cls.__name__, (cls,), namespace)
    return _PARAMETRIZED_CLASSES[key]


class _Binding:
    """What `Parametrized` knows about one parametrized weight."""

    # `free` holds the wrapper's variables of a parametrization whose free
    # parameters have their own shapes (`variable` is then set aside, at
    # `index` among the layer's weights); it is None when `variable` holds
    # the free parameter. `regularizer` is the variable's own, moved to act
    # on the computed weight. `dependencies` lists every variable that
    # P(free) reads, for `parametrize.cached()`.
    __slots__ = (
        "dependencies",
        "free",
        "index",
        "name",
        "parametrization",
        "regularizer",
        "variable",
    )

    def __init__(self, name, parametrization, variable, own_variables=()):
        self.name = name
        self.parametrization = parametrization
        self.variable = variable
        self.dependencies = (variable, *own_variables)
        self.free = None
        self.index = None
        self.regularizer = None


class _RegularizeComputedWeight(keras.regularizers.Regularizer):
    """A weight regularizer that penalises `P(free)`, not the free parameter.

    A `Regularizer` subclass: Keras before 3.15 accepts only those on a
    variable.
    """

    def __init__(self, wrapper, binding):
        self.holder = _WrapperHolder(wrapper)
        self.binding = binding

    def __call__(self, free):
        binding = self.binding
        return binding.regularizer(self.holder.wrapper._compute(binding))


@keras.saving.register_keras_serializable(package="keras_tether")
class Parametrized(keras.layers.Layer):
    """Wraps a layer so that some of its weights are functions of free parameters.

    For each entry `name: P` of `parametrizations`, the layer computes with
    `W = P(free)` wherever it reads `layer.<name>`: in every call, eager or
    compiled, in `fit`, `evaluate` and `predict`, on every backend. The free
    parameter is the layer's own variable (same object, same name and path,
    same place in the checkpoint), so there is exactly one stored variable per
    parametrized weight, and the optimizer updates it; gradients flow through
    `P`. The constraint holds by construction after every optimizer step, at
    any learning rate, where a `keras.constraints` projection only restores it
    after the step and ignores it in the gradient.

    The wrapped layer needs no subclassing: `Dense`, `EinsumDense`,
    `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose`, `Embedding` and any layer that
    reads the weight as an attribute in `call` work as they are. Reading
    `layer.<name>` anywhere, for example in the reverse direction of a wrapped
    `ReversibleDense`, returns the constrained value, so ties compose with
    parametrizations. (While wrapped, the layer's class is a subclass of its
    own, of the same name, that defines those attributes; `isinstance` checks
    still hold, the layer is saved as its own class, and `remove()` restores
    the class.) Inside the wrapper's call, `P` runs once per call, in the
    variable dtype (float32 under mixed precision), and the result is cast to
    the layer's compute dtype.

    By default (`initial="keep"`) the layer keeps its current weight: the
    free parameter is set to `P.right_inverse(W)`, projecting `W` onto the
    set when it lies outside. `initial="sample"` draws a random point of the
    set instead (Haar-distributed for `Orthogonal`). Variables that a
    parametrization needs for itself (the magnitude of `WeightNorm`, the power
    iteration state of `SpectralNorm`) belong to this wrapper and are named
    `<weight>_<variable>`. Free parameters of shapes of their own (the
    factors of `LowRank`) are variables of this wrapper too, named the same
    way; the layer's own variable is then set aside (neither trained nor
    counted, saved as the computed weight) until `remove()`.

    A weight regularizer of the wrapped layer (`kernel_regularizer`)
    penalises the computed weight `P(free)`, the one the layer uses, not the
    free parameter. A weight constraint (`kernel_constraint`) on a
    parametrized weight is refused: the parametrization is the constraint.

    Read the constrained value with `parametrized_weight(name)` (or
    `layer.<name>`), the free variable with `free_weight(name)`. `remove()`
    gives the plain layer back with the constrained value baked into its
    variable, for serving without the cost of `P`.

    Args:
        layer: The `keras.layers.Layer` to wrap. It may be built or not.
        parametrizations: Dict mapping the name of a weight attribute of
            `layer` (such as `"kernel"`) to a
            `keras_tether.parametrize.Parametrization` (a fresh instance per
            weight) or its config.
        initial: String, `"keep"` (default) to keep the layer's current
            weights, projected onto each set, or `"sample"` to draw them from
            the set.
        seed: Integer or `None`, the seed of `initial="sample"`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: The inputs of the wrapped layer.
        training: Python boolean, whether the call is in training mode;
            parametrizations with state (`SpectralNorm`) advance it only then.
        **kwargs: Further keyword arguments of the wrapped layer's `call`.

    Input shape:
        That of the wrapped layer.

    Output shape:
        That of the wrapped layer.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether import layers, parametrize
    >>> dense = keras.layers.Dense(4, use_bias=False)
    >>> wrapped = layers.Parametrized(dense, {"kernel": parametrize.Orthogonal()})
    >>> y = wrapped(np.ones((2, 6), dtype="float32"))
    >>> kernel = keras.ops.convert_to_numpy(wrapped.parametrized_weight("kernel"))
    >>> bool(np.allclose(kernel.T @ kernel, np.eye(4), atol=1e-5))
    True
    >>> bool(np.allclose(keras.ops.convert_to_numpy(dense.kernel), kernel))
    True
    >>> len(wrapped.trainable_weights)  # one variable per weight, no copy
    1
    >>> plain = wrapped.remove()  # the constrained kernel, baked in
    >>> kernel = keras.ops.convert_to_numpy(plain.kernel)
    >>> bool(np.allclose(kernel.T @ kernel, np.eye(4), atol=1e-5))
    True
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        parametrizations: dict[str, Parametrization | dict],
        initial: str = "keep",
        seed: int | None = None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "Expected `layer` to be a `keras.layers.Layer` instance. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        # The free parameters are read in their own dtype and the map runs
        # there (no autocasting, and a policy that never enters an autocast
        # scope); the wrapped layer still autocasts its own computation.
        kwargs["autocast"] = False
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = layer.dtype_policy.variable_dtype
        super().__init__(**kwargs)
        if hasattr(type(layer), "_parametrized_base_class"):
            raise ValueError(
                f"Layer '{layer.name}' is already wrapped by a `Parametrized` "
                "layer. Parametrize all of its weights in one wrapper, or call "
                "`remove()` on the other wrapper first."
            )
        self._parametrizations = _check_parametrizations(parametrizations)
        if not isinstance(initial, str):
            raise TypeError(
                "Expected `initial` to be a string. "
                f"Received: initial={initial!r} of type {type(initial).__name__}"
            )
        if initial not in _INITIAL:
            raise ValueError(
                "Received an invalid value for `initial`, expected one of "
                f"{_INITIAL}. Received: initial={initial!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(
                "Expected `seed` to be an integer or None. "
                f"Received: seed={seed!r} of type {type(seed).__name__}"
            )
        self.initial = initial
        self.seed = seed
        self.layer = layer
        self._bindings: dict[str, _Binding] = {}
        self._call_values: dict | None = None
        self._removed = False
        self.supports_masking = getattr(layer, "supports_masking", False)
        if layer.built:
            self._register()
            self.built = True

    def build(self, input_shape=None):
        if not self.layer.built:
            # Name the layer's variables as if it were not wrapped (`dense/
            # kernel`), as they are named when a saved model is loaded.
            set_parent_path(self.layer, self.path.rpartition("/")[0])
            self.layer.build(input_shape)
        if not self._bindings:
            self._register()

    def _register(self) -> None:
        layer = self.layer
        for name, parametrization in self._parametrizations.items():
            variable = _find_variable(layer, name)
            _check_no_constraint(layer, name, variable)
            shape = tuple(variable.shape)
            own_variables = []

            def add_weight(name, *, _prefix=name, _own=own_variables, **kwargs):
                created = self.add_weight(name=f"{_prefix}_{name}", **kwargs)
                _own.append(created)
                return created

            parametrization.build(shape, add_weight)
            binding = _Binding(name, parametrization, variable)
            free_shapes = parametrization.free_shapes(shape)
            if free_shapes is not None:
                binding.free = {
                    key: add_weight(
                        key, shape=free_shape, initializer="zeros", dtype=variable.dtype
                    )
                    for key, free_shape in free_shapes.items()
                }
            if self.initial == "sample":
                seed = None if self.seed is None else self.seed + len(self._bindings)
                free = parametrization.sample(shape, seed=seed)
            else:
                free = parametrization.right_inverse(ops.convert_to_tensor(variable))
            if binding.free is None:
                variable.assign(ops.cast(free, variable.dtype))
                regularized = variable
            else:
                for key, free_variable in binding.free.items():
                    free_variable.assign(ops.cast(free[key], free_variable.dtype))
                binding.index = _set_aside(layer, variable)
                regularized = next(iter(binding.free.values()))
            if variable.regularizer is not None:
                binding.regularizer = variable.regularizer
                regularized.regularizer = _RegularizeComputedWeight(self, binding)
            # Every variable P(free) reads: the free parameter (or the
            # wrapper's free factors) and the parametrization's own state.
            binding.dependencies = (variable, *own_variables)
            self._bindings[name] = binding
        names = tuple(sorted(self._bindings))
        object.__setattr__(layer, "_parametrized_holder", _WrapperHolder(self))
        layer.__class__ = _parametrized_class(type(layer), names)

    @property
    def parametrizations(self) -> dict[str, Parametrization]:
        """The parametrization of each parametrized weight, by name."""
        return dict(self._parametrizations)

    def free_weight(self, name: str):
        """The variable that holds the free parameter of weight `name`.

        For a parametrization with free parameters of their own shapes
        (`LowRank`), a dict of this wrapper's variables, by name.
        """
        binding = self._binding(name)
        return binding.variable if binding.free is None else dict(binding.free)

    def parametrized_weight(self, name: str):
        """The constrained value `P(free)` of weight `name`, in the variable dtype."""
        self._check_usable()
        return self._compute(self._binding(name))

    def call(self, inputs, training=None, **kwargs):
        self._check_usable()
        values = {}
        for name, binding in self._bindings.items():
            if training and _has_update(binding.parametrization):
                binding.parametrization.update(_read_free(binding))
            values[name] = self._compute(binding)
        self._call_values = values
        try:
            if training is not None:
                kwargs["training"] = training
            return self.layer(inputs, **kwargs)
        finally:
            self._call_values = None

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def remove(self, bake: bool = True) -> keras.layers.Layer:
        """Returns the wrapped layer without its parametrizations.

        Run it eagerly, outside any compiled function. This wrapper cannot be
        called afterwards; build new models around the returned layer.

        Args:
            bake: Boolean. If `True` (default), each weight variable is set to
                its constrained value `P(free)`, so the plain layer computes
                exactly as the wrapper did (inference without the cost of
                `P`). If `False`, the variables keep the free parameters.

        Returns:
            The wrapped layer, of its original class.
        """
        bake = check_bool(bake, "bake")
        self._check_usable()
        if not self._bindings:
            self._removed = True
            return self.layer
        if not bake:
            for name, binding in self._bindings.items():
                if binding.free is not None:
                    raise ValueError(
                        f"The free parameters of weight {name!r} "
                        f"({type(binding.parametrization).__name__}) do not have "
                        "its shape, so they cannot stay in its variable. Call "
                        "`remove(bake=True)`."
                    )
        values = {name: self._compute(b) for name, b in self._bindings.items()}
        layer = self.layer
        layer.__class__ = type(layer)._parametrized_base_class
        object.__delattr__(layer, "_parametrized_holder")
        for binding in reversed(self._bindings.values()):
            if binding.free is not None:
                _put_back(layer, binding.variable, binding.index)
            elif binding.regularizer is not None:
                binding.variable.regularizer = binding.regularizer
        if bake:
            for name, binding in self._bindings.items():
                binding.variable.assign(values[name])
        self._removed = True
        return layer

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("autocast", None)
        config.update(
            {
                "layer": _serialize_plain(self.layer),
                "parametrizations": {
                    name: parametrize_module.serialize(p)
                    for name, p in self._parametrizations.items()
                },
                "initial": self.initial,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None):
        config = dict(config)
        config.pop("autocast", None)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        parametrizations = {
            name: parametrize_module.deserialize(p)
            for name, p in config.pop("parametrizations").items()
        }
        return cls(layer, parametrizations, **config)

    def _binding(self, name: str) -> _Binding:
        if not self._bindings:
            raise ValueError(
                f"Layer '{self.name}' is not built yet, so its parametrized "
                "weights do not exist. Call it on an input first."
            )
        if name not in self._bindings:
            raise ValueError(
                f"Layer '{self.layer.name}' has no parametrized weight {name!r}. "
                f"Parametrized weights: {sorted(self._bindings)}"
            )
        return self._bindings[name]

    def _compute(self, binding: _Binding):
        return compute_cached(
            binding, binding.dependencies, lambda: _compute_value(binding)
        )

    def _value_for_layer(self, name: str):
        if self._call_values is not None:
            value = self._call_values[name]
            if keras.backend.standardize_dtype(value.dtype) == self.layer.compute_dtype:
                return value
            return ops.cast(value, self.layer.compute_dtype)
        return self._compute(self._bindings[name])

    def _check_usable(self) -> None:
        if self._removed:
            raise ValueError(
                f"Layer '{self.name}' was removed with `remove()`; use the layer "
                "it returned."
            )


def _compute_value(binding: _Binding):
    return binding.parametrization(_read_free(binding))


def _has_update(parametrization: Parametrization) -> bool:
    # Most parametrizations keep no state: skip the extra read and call.
    return type(parametrization).update is not Parametrization.update


def _read_free(binding: _Binding):
    # Read outside this wrapper's call, a variable may come autocast to a
    # lower precision; the map runs in the variable dtype regardless (and
    # casts only when the dtypes differ).
    def read(variable):
        value = ops.convert_to_tensor(variable)
        if keras.backend.standardize_dtype(value.dtype) != variable.dtype:
            value = ops.cast(value, variable.dtype)
        return value

    if binding.free is None:
        return read(binding.variable)
    return {key: read(variable) for key, variable in binding.free.items()}


def _check_no_constraint(layer, name: str, variable) -> None:
    if variable.constraint is not None:
        raise ValueError(
            f"Weight {name!r} of layer '{layer.name}' has a constraint "
            f"({variable.constraint!r}). A parametrized weight is constrained "
            "by its parametrization; a constraint would project the free "
            "parameter after each step, not the weight. Create the layer "
            f"without it (`{name}_constraint=None`)."
        )


def _check_parametrizations(parametrizations) -> dict[str, Parametrization]:
    if not isinstance(parametrizations, dict):
        raise TypeError(
            "Expected `parametrizations` to be a dict mapping weight names to "
            "`Parametrization` objects. Received: "
            f"parametrizations={parametrizations!r} of type "
            f"{type(parametrizations).__name__}"
        )
    if not parametrizations:
        raise ValueError(
            "Received an invalid value for `parametrizations`, expected at "
            "least one weight. Received: parametrizations={}"
        )
    checked = {}
    seen = set()
    for name, parametrization in parametrizations.items():
        if not isinstance(name, str) or not name:
            raise TypeError(
                "Expected the keys of `parametrizations` to be weight names "
                f"(non-empty strings). Received: {name!r}"
            )
        if isinstance(parametrization, dict):
            parametrization = parametrize_module.deserialize(parametrization)
        if not isinstance(parametrization, Parametrization):
            raise TypeError(
                "Expected the values of `parametrizations` to be "
                "`keras_tether.parametrize.Parametrization` objects. Received: "
                f"parametrizations[{name!r}]={parametrization!r} of type "
                f"{type(parametrization).__name__}"
            )
        if parametrization.built or id(parametrization) in seen:
            raise ValueError(
                f"The parametrization given for {name!r} already belongs to a "
                "weight (it holds that weight's variables). Pass a new instance "
                f"for each weight. Received: parametrizations[{name!r}]="
                f"{parametrization!r}"
            )
        seen.add(id(parametrization))
        checked[name] = parametrization
    return checked


def _find_variable(layer: keras.layers.Layer, name: str):
    try:
        value = getattr(layer, name)
    except AttributeError:
        value = None
    for variable in layer.weights:
        if value is variable:
            return variable
    names = sorted({w.path.split("/")[-1] for w in layer.weights})
    raise ValueError(
        f"Each key of `parametrizations` must name a weight attribute of the "
        f"wrapped layer that holds one of its variables (LoRA or quantization "
        f"replaces it with a computed tensor). Layer '{layer.name}' "
        f"({type(layer).__name__}) has variables named {names}. Received: "
        f"parametrizations key {name!r}"
    )


def _serialize_plain(layer: keras.layers.Layer) -> dict:
    """Serializes `layer` as its own class, not the parametrized subclass."""
    if not hasattr(type(layer), "_parametrized_base_class"):
        return keras.saving.serialize_keras_object(layer)
    with _AsBaseClass(layer) as plain:
        return keras.saving.serialize_keras_object(plain)
