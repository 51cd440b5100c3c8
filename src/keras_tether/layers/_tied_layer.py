"""The base class of every layer that computes with another layer's variables."""

from __future__ import annotations

import functools
import math
from typing import Any

import keras
from keras import constraints, initializers, ops, regularizers

from keras_tether._validation import check_bool

# Quantized sources whose float weight is `stored / scale`, with one scale per
# row or column: the tied layer computes with exactly the weight the source
# itself uses. Other modes (grouped int4, GPTQ, AWQ) are refused.
_SCALED_MODES = ("int8", "int4")
_SCALE_AXIS = {"kernel": -1, "embeddings": 0}


class _SourceHolder:
    """Holds the source layer out of sight of Keras' automatic tracking.

    A tracked source would become a sublayer: its variables (bias included)
    would be listed, saved and counted as the tied layer's own.
    """

    __slots__ = ("layer",)

    def __init__(self, layer: keras.layers.Layer):
        self.layer = layer


class TiedLayer(keras.layers.Layer):
    """Base class for layers that reuse a variable owned by another layer.

    A tied layer holds a reference to its `source` layer and reads the
    source's live variables in `call`: nothing is copied, gradients from both
    uses reach the one shared variable, and the two stay equal by
    construction. The tied layer owns only its own variables (a bias, say).

    What a tie means for the rest of Keras:

    - `weights`, `trainable_weights` and `variables` list the tied layer's own
      variables followed by the shared ones it reads (never the source's
      unused variables, such as its bias). A model lists a shared variable
      once, so `model.count_params()` counts it once, and the tie trains even
      when the source layer itself is not called anywhere in the model.
    - `count_params()` of the tied layer counts only what it owns, so the rows
      of `model.summary()` add up to the total: the shared variable is counted
      in its owner's row.
    - `trainable` of the tied layer governs only its own variables. Whether the
      shared variable trains is decided by its owner: freeze the source layer
      to freeze the tie. Setting `tied_layer.trainable = False` never freezes
      the source.
    - Saving stores the shared variable once, under its owner (or under the
      tied layer when the source is not part of the saved model).
    - Masks pass through, as with `keras.layers.Dense`.

    How a tie survives rebuilding. A tied layer rebuilt from its config
    (`.keras` loading, `keras.models.clone_model`, `Model.from_config`) binds
    to its source only in ways that cannot pick the wrong layer:

    1. `.keras` loading hands it the very object the loaded model uses as the
       source (Keras' object sharing), whatever the layer order or nesting.
    2. Otherwise it binds to the layer of the source's name and class found
       upstream of it in the graph it is called on.
    3. Otherwise the tie is *pending*: the layer refuses to compute until
       `keras_tether.ties.retie(model)` binds it by name inside `model`,
       `retie(model, sources={...})` or `bind(source)` binds it explicitly,
       or the model is cloned with `keras_tether.ties.clone_model`, which
       keeps every tie of the original exactly.

    A source that was never called in a model (a layer built on its own) is
    serialized with the tied layer and comes back as its private source.
    Nothing is ever looked up outside the model at hand.

    A quantized source is read through its quantization: int8 and
    per-channel int4 weights are divided by their scales, float8 weights are
    read as they are; other modes are refused with an error.

    Subclasses set `source_types`, implement `shared_variables`, and read the
    source's weights through `read_source_weight`. Subclasses with a bias of
    their own pass `use_bias=True` and the bias arguments to this class and
    call `add_own_bias(size)` in `build`.

    Args:
        source: The layer that owns the shared variable. Must be an instance
            of one of `source_types`.
        use_bias: Boolean, whether the layer has a bias vector of its own.
        bias_initializer: Initializer for the bias vector.
        bias_regularizer: Regularizer function applied to the bias vector.
        bias_constraint: Constraint function applied to the bias vector.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Example:

    A layer that scales its input by another layer's bias vector:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether.layers import TiedLayer
    >>> class BiasScale(TiedLayer):
    ...     source_types = (keras.layers.Dense,)
    ...     def shared_variables(self):
    ...         return [self.source.bias]
    ...     def call(self, inputs):
    ...         return inputs * self.read_source_weight("bias")
    >>> dense = keras.layers.Dense(2, bias_initializer="ones")
    >>> dense.build((None, 3))
    >>> scale = BiasScale(dense)
    >>> keras.ops.convert_to_numpy(scale(np.full((1, 2), 3.0))).tolist()
    [[3.0, 3.0]]
    >>> len(scale.weights), scale.count_params()  # reads one, owns none
    (1, 0)
    """

    source_types: tuple[type, ...] = (keras.layers.Layer,)

    def __init__(
        self,
        source: keras.layers.Layer,
        *,
        use_bias: bool = False,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        **kwargs,
    ):
        self._has_variables = False
        super().__init__(**kwargs)
        # A pending tie reports itself unbuilt (see `built`), so Keras may ask
        # it to build again; its variables exist already.
        keras_build = self.build

        @functools.wraps(keras_build)
        def build(*args, **build_kwargs):
            if not self._has_variables:
                keras_build(*args, **build_kwargs)

        self.build = build
        self._check_source(source)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.bias_initializer = initializers.get(bias_initializer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.bias_constraint = constraints.get(bias_constraint)
        self.bias = None
        self.supports_masking = True
        self._source_holder = _SourceHolder(source)
        # Set when the layer was rebuilt from a config and has not found its
        # source yet: the name of the layer it must be bound to.
        self._pending_source_name: str | None = None
        self._source_in_graph = False

    @property
    def built(self) -> bool:
        """Whether the layer is ready to compute: built, and its tie bound.

        A pending tie is not ready. Keras' trainers check this before they
        run a step, so `fit`, `evaluate` and `predict` stop with the
        pending-tie error before touching any variable.
        """
        return self._has_variables and not self.tie_pending

    @built.setter
    def built(self, value: bool) -> None:
        self._has_variables = bool(value)

    @property
    def source(self) -> keras.layers.Layer:
        """The layer that owns the shared variables."""
        return self._source_holder.layer

    @property
    def tie_pending(self) -> bool:
        """True while a rebuilt tie has not been bound to its source."""
        return self._pending_source_name is not None

    @property
    def pending_source_name(self) -> str | None:
        """Name of the source a pending tie waits for, else `None`."""
        return self._pending_source_name

    def bind(self, source: keras.layers.Layer) -> None:
        """Ties this layer to `source` from now on.

        Use it for a tied layer whose source is not in its model (a decoder
        saved or cloned alone), or to move a tie on purpose. The new source
        must be of an accepted type, and its shared variables must have the
        shapes of the current ones.

        Args:
            source: The layer that owns the shared variables.

        Raises:
            TypeError: if `source` is not an instance of `source_types`.
            ValueError: if the shapes of its shared variables differ.
        """
        self._check_source(source)
        current = self.source
        if source is not current and source.built and current.built:
            new = [tuple(v.shape) for v in _shared_of(self, source)]
            old = [tuple(v.shape) for v in self.shared_variables()]
            if new != old:
                raise ValueError(
                    f"Cannot tie layer '{self.name}' to layer '{source.name}': "
                    f"its shared variables have shapes {new}, expected {old}."
                )
        self._source_holder.layer = source
        self._pending_source_name = None
        self._source_in_graph = self._source_in_graph or _in_graph(source)

    def bind_within(self, model: keras.layers.Layer) -> bool:
        """Binds a pending tie to its source inside `model`, exactly or not at all.

        The source is the one layer of `model` (nested models included) with
        the name and class the tie waits for. With none, or more than one,
        nothing changes. A model that runs binds its pending ties this way.

        Args:
            model: The model that holds this layer.

        Returns:
            Whether the tie is bound now.
        """
        if self.tie_pending:
            name, cls = self._pending_source_name, type(self.source)
            found = {id(x): x for x in _matching_layers(model, name, cls)}
            if len(found) == 1:
                self.bind(next(iter(found.values())))
        return not self.tie_pending

    def shared_variables(self) -> list:
        """The source's variables that this layer's computation reads."""
        raise NotImplementedError

    def read_source_weight(self, name: str):
        """The source's weight `name`, as the float tensor it computes with.

        Checks that the source is built and that the attribute is a weight,
        and reads a quantized source through its scales.

        Args:
            name: String, the attribute of the source that holds the weight.
        """
        source = self.source
        if not source.built:
            raise ValueError(
                f"Layer '{self.name}' is tied to layer '{source.name}', which is "
                "not built yet, so its weights do not exist. Call the source "
                "layer on an input (or `source.build(input_shape)`) before "
                f"using '{self.name}'."
            )
        try:
            value = getattr(source, name)
        except AttributeError:
            value = None
        if not _is_weight(value):
            raise ValueError(
                f"Layer '{source.name}' ({type(source).__name__}) has no weight "
                f"{name!r}: expected the name of an attribute that holds a "
                f"variable or tensor. Received: weight={name!r} (the attribute "
                f"holds {type(value).__name__})"
            )
        mode = getattr(source, "quantization_mode", None)
        if mode is None or mode == "float8":
            return value
        if not _reads_through_scale(source, name, value):
            raise ValueError(_quantized_message(self, source, mode))
        scale = getattr(source, f"{name}_scale")
        axis = _SCALE_AXIS[name]
        shape = [1] * len(value.shape)
        shape[axis] = -1
        return ops.divide(ops.cast(value, "float32"), ops.reshape(scale, shape))

    def add_own_bias(self, size: int) -> None:
        """Creates this layer's own bias of `size` when `use_bias` is set."""
        if not self.use_bias:
            self.bias = None
            return
        self.bias = self.add_weight(
            name="bias",
            shape=(size,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    @property
    def weights(self) -> list:
        return _with_shared(self, super().weights)

    @property
    def variables(self) -> list:
        return _with_shared(self, super().variables)

    def count_params(self) -> int:
        if not self._has_variables:
            raise ValueError(
                f"You tried to call `count_params` on layer '{self.name}', but "
                "the layer isn't built. Call it on an input first."
            )
        # Only what this layer owns: the shared variables are its source's.
        return sum(math.prod(w.shape) for w in super().weights)

    def __call__(self, *args, **kwargs):
        if self.tie_pending:
            self._resolve_pending(args)
            calling_model = self._calling_model()
            if self.tie_pending and calling_model is not None:
                self.bind_within(calling_model)
            if self.tie_pending and not _all_symbolic(args):
                raise ValueError(pending_message(self))
        return super().__call__(*args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return mask

    def quantize(self, mode=None, type_check=True, config=None):
        # `model.quantize` visits every layer. A tied layer owns no weight to
        # quantize: it reads its source's, through the source's quantization.
        del mode, type_check, config

    def _resolve_pending(self, args) -> None:
        source = self.source
        # The source object came from Keras' deserialization. When the rebuilt
        # model uses that same object as one of its layers (object sharing
        # while loading a `.keras` file), the model has called it by now.
        if _in_graph(source):
            self.bind(source)
            return
        upstream = _find_upstream(args, self._pending_source_name, type(source))
        if upstream is not None:
            self.bind(upstream)

    def _calling_model(self):
        """The outermost layer of the call in progress, if it is not this one.

        When a model runs, it is the model: the model at hand, whose layers
        a pending tie may be bound to by name.
        """
        entry = self._get_call_context().entry_layer
        return None if entry is self else entry

    def _check_source(self, source: Any) -> None:
        if not isinstance(source, self.source_types):
            expected = " or ".join(
                f"`keras.layers.{cls.__name__}`" for cls in self.source_types
            )
            raise TypeError(
                f"Expected `source` to be a {expected} instance. "
                f"Received: source={source!r} of type {type(source).__name__}"
            )
        mode = getattr(source, "quantization_mode", None)
        if mode not in (None, "float8", *_SCALED_MODES):
            raise ValueError(_quantized_message(self, source, mode))

    def get_config(self) -> dict:
        config = super().get_config()
        source = self.source
        # Serializing twice inside Keras' object-sharing scope (`.keras`
        # saving) marks this copy as shared at once, before any container
        # copies the config: loading then gives this layer the very object
        # the model uses, in whatever order the two are deserialized.
        keras.saving.serialize_keras_object(source)
        config["source"] = keras.saving.serialize_keras_object(source)
        # A source that was called in a graph belongs to a model: a rebuilt
        # copy must find that model's layer instead of keeping its own.
        config["source_in_graph"] = self._source_in_graph or _in_graph(source)
        config.update(
            {
                "use_bias": self.use_bias,
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "bias_constraint": constraints.serialize(self.bias_constraint),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        source_config = config.pop("source")
        source_in_graph = bool(config.pop("source_in_graph", False))
        source = keras.saving.deserialize_keras_object(source_config)
        layer = cls(source=source, **config)
        layer._source_in_graph = source_in_graph
        if source_in_graph:
            # The source belongs to a model; until it is found there, the
            # deserialized object is only a candidate (see `_resolve_pending`).
            layer._pending_source_name = source.name
            _load_only_what_was_saved(source)
        return layer


def pending_message(layer: TiedLayer) -> str:
    """The error a pending tie raises: what is missing and how to fix it."""
    return (
        f"Layer '{layer.name}' is tied to a layer named "
        f"'{layer.pending_source_name}' ({type(layer.source).__name__}), but "
        "that layer was not found after the model was rebuilt: it is not "
        f"upstream of '{layer.name}', and the tie is never guessed. Running "
        "now would compute with an untied copy. Fix it with "
        "`keras_tether.ties.retie(model)` when the model holds that layer, or "
        f"`keras_tether.ties.retie(model, sources={{'{layer.name}': "
        "source_layer})` when it does not; clone tied models with "
        "`keras_tether.ties.clone_model`, which keeps every tie."
    )


def _with_shared(layer: TiedLayer, own: list) -> list:
    # A pending tie's candidate source is not known to be its source yet: its
    # variables are not this layer's to list (nor to train or count).
    if layer.tie_pending:
        return own
    seen = {id(v) for v in own}
    return own + [v for v in layer.shared_variables() if id(v) not in seen]


def _load_only_what_was_saved(candidate: keras.layers.Layer) -> None:
    """Lets a candidate source load from a weights file that holds none for it.

    A `.keras` file stores a shared variable once, under its owner. When the
    owner is elsewhere in the file, the candidate created from the tied
    layer's config finds nothing under the tied layer; it keeps its
    variables (it is never bound, see `_resolve_pending`). When the source
    was saved with the tied layer alone, its variables are there and load.
    """
    load = candidate.load_own_variables

    def load_own_variables(store):
        if len(store.keys()) == 0:
            return
        load(store)

    candidate.load_own_variables = load_own_variables


def _in_graph(layer: keras.layers.Layer) -> bool:
    return bool(getattr(layer, "_inbound_nodes", None))


def _is_weight(value) -> bool:
    return isinstance(value, keras.Variable) or (
        value is not None
        and hasattr(value, "shape")
        and hasattr(value, "dtype")
        and not isinstance(value, keras.KerasTensor)
    )


def _reads_through_scale(source, name: str, value) -> bool:
    """Whether `value` is a quantized weight with one scale per row or column."""
    scale = getattr(source, f"{name}_scale", None)
    return (
        source.quantization_mode in _SCALED_MODES
        and name in _SCALE_AXIS
        and scale is not None
        and math.prod(scale.shape) == value.shape[_SCALE_AXIS[name]]
        and getattr(source, f"{name}_zero", None) is None
        and not getattr(source, "lora_enabled", False)
    )


def _quantized_message(layer, source, mode) -> str:
    return (
        f"Layer '{layer.name}' cannot be tied to layer '{source.name}', which is "
        f"quantized with mode {mode!r}; a tie reads int8 or per-channel int4 "
        "weights through their scales, and float8 weights as they are, but "
        "not this mode. Quantize with one of those modes, or exclude "
        f"'{source.name}' from quantization (`model.quantize(mode, "
        "filters=...)`)."
    )


def _shared_of(layer: TiedLayer, source: keras.layers.Layer) -> list:
    current = layer._source_holder.layer
    layer._source_holder.layer = source
    try:
        return layer.shared_variables()
    finally:
        layer._source_holder.layer = current


def _all_symbolic(args) -> bool:
    flat = keras.tree.flatten(args)
    tensors = [x for x in flat if hasattr(x, "shape")]
    return bool(tensors) and all(isinstance(x, keras.KerasTensor) for x in tensors)


def _find_upstream(args, name: str, cls: type):
    """The one layer `name` of class `cls` upstream of symbolic `args`.

    Returns `None` when there is none, or more than one (nested models may
    reuse a name): the tie then stays pending rather than guess.
    """
    seen: set[int] = set()
    found: dict[int, keras.layers.Layer] = {}
    stack = [x for x in keras.tree.flatten(args) if isinstance(x, keras.KerasTensor)]
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        operation, node_index = history[0], history[1]
        if id(operation) in seen:
            continue
        seen.add(id(operation))
        for layer in _matching_layers(operation, name, cls):
            found[id(layer)] = layer
        nodes = getattr(operation, "_inbound_nodes", [])
        if node_index < len(nodes):
            stack.extend(nodes[node_index].input_tensors)
    return next(iter(found.values())) if len(found) == 1 else None


def _matching_layers(layer, name: str, cls: type) -> list:
    """`layer` and, for a model, its nested layers, named `name` of class `cls`."""
    matches = [layer] if type(layer) is cls and layer.name == name else []
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            matches.extend(_matching_layers(inner, name, cls))
    return matches
