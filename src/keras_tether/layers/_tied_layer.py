"""The base class of every layer that computes with another layer's variables."""

from __future__ import annotations

import gc
import math
import weakref
from typing import Any

import keras

# Every live tied layer, so a revived layer can tell which candidate sources
# are already taken by the model it was copied from.
_LIVE_TIED_LAYERS: weakref.WeakSet = weakref.WeakSet()


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
    - Saving stores the shared variable once, under its owner.

    Ties survive saving, loading, `keras.models.clone_model` and
    `Model.from_config(model.get_config())`. When a model is rebuilt from its
    config, a tied layer finds its new source by name: the layer upstream of
    it in the graph, else the one live layer of that name and class that no
    other copy of this tied layer uses. If that cannot be decided, the layer
    refuses to run (rather than silently computing with a private copy) until
    `keras_tether.ties.retie(model)` binds it.

    A quantized source is refused: its weight is no float tensor to share.
    Subclasses set `source_types` and implement `shared_variables`.

    Args:
        source: The layer that owns the shared variable. Must be an instance
            of one of `source_types`.
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
    ...         return inputs * self.source.bias
    >>> dense = keras.layers.Dense(2, bias_initializer="ones")
    >>> dense.build((None, 3))
    >>> scale = BiasScale(dense)
    >>> keras.ops.convert_to_numpy(scale(np.full((1, 2), 3.0))).tolist()
    [[3.0, 3.0]]
    >>> len(scale.weights), scale.count_params()  # reads one, owns none
    (1, 0)
    """

    source_types: tuple[type, ...] = (keras.layers.Layer,)

    def __init__(self, source: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self._check_source(source)
        self._source_holder = _SourceHolder(source)
        self._pending_source_name: str | None = None
        self._source_in_graph = False
        _LIVE_TIED_LAYERS.add(self)

    @property
    def source(self) -> keras.layers.Layer:
        """The layer that owns the shared variables."""
        return self._source_holder.layer

    @property
    def tie_pending(self) -> bool:
        """True while a revived tie has not found its source yet."""
        return self._pending_source_name is not None

    def shared_variables(self) -> list:
        """The source's variables that this layer's computation reads."""
        raise NotImplementedError

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
        if mode is not None:
            raise ValueError(
                f"Cannot tie to layer '{source.name}': it is quantized "
                f"(quantization_mode={mode!r}), and a quantized weight cannot be "
                "shared as a float tensor. Tie the layers before quantizing, or "
                "keep the source unquantized."
            )

    def _bind(self, source: keras.layers.Layer) -> None:
        self._check_source(source)
        if source.built and self.source.built:
            new = [tuple(v.shape) for v in _shared_of(self, source)]
            old = [tuple(v.shape) for v in self.shared_variables()]
            if new != old:
                raise ValueError(
                    f"Cannot tie layer '{self.name}' to layer '{source.name}': "
                    f"its shared variables have shapes {new}, expected {old}."
                )
        self._source_holder.layer = source
        self._pending_source_name = None

    @property
    def weights(self) -> list:
        own = super().weights
        seen = {id(w) for w in own}
        return own + [w for w in self.shared_variables() if id(w) not in seen]

    @property
    def variables(self) -> list:
        own = super().variables
        seen = {id(v) for v in own}
        return own + [v for v in self.shared_variables() if id(v) not in seen]

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(
                f"You tried to call `count_params` on layer '{self.name}', but "
                "the layer isn't built. Call it on an input first."
            )
        # Only what this layer owns: the shared variables are its source's.
        return sum(math.prod(w.shape) for w in super().weights)

    def __call__(self, *args, **kwargs):
        if self.tie_pending:
            self._resolve_pending(args)
            if self.tie_pending and not _all_symbolic(args):
                raise ValueError(_pending_message(self))
        return super().__call__(*args, **kwargs)

    def _resolve_pending(self, args) -> None:
        name = self._pending_source_name
        cls = type(self.source)
        upstream = _find_upstream(args, name, cls)
        if upstream is not None:
            self._bind(upstream)
            return
        candidate = _unique_live_candidate(
            name, cls.__name__, self.name, exclude=self.source
        )
        if candidate is not None:
            self._bind(candidate)

    def get_config(self) -> dict:
        config = super().get_config()
        source = self.source
        config["source"] = keras.saving.serialize_keras_object(source)
        # A source that was called in a graph belongs to a model: a revived
        # copy must find that model's layer instead of keeping its own.
        config["source_in_graph"] = self._source_in_graph or bool(
            getattr(source, "_inbound_nodes", None)
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        source_config = config.pop("source")
        source_in_graph = bool(config.pop("source_in_graph", False))
        source_name = source_config.get("config", {}).get("name")
        source = None
        if source_in_graph:
            source = _unique_live_candidate(
                source_name, source_config.get("class_name"), config.get("name")
            )
        # Inside Keras' own object-sharing scope (`.keras` loading), a source
        # serialized twice comes back as the one shared object.
        in_sharing_scope = "shared_object_id" in source_config
        private_copy = source is None
        if private_copy:
            source = keras.saving.deserialize_keras_object(source_config)
        layer = cls(source=source, **config)
        layer._source_in_graph = source_in_graph
        if source_in_graph and private_copy and not in_sharing_scope:
            layer._pending_source_name = source_name
        return layer


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
    """Searches the graph upstream of symbolic `args` for a layer `name`."""
    seen: set[int] = set()
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
        found = _search_layer(operation, name, cls)
        if found is not None:
            return found
        nodes = getattr(operation, "_inbound_nodes", [])
        if node_index < len(nodes):
            stack.extend(nodes[node_index].input_tensors)
    return None


def _search_layer(layer, name: str, cls: type):
    """Finds `name` in `layer` or, for a model, among its nested layers."""
    if type(layer) is cls and layer.name == name:
        return layer
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            found = _search_layer(inner, name, cls)
            if found is not None:
                return found
    return None


def _unique_live_candidate(name, class_name, tied_name, exclude=None):
    """The one live layer `name` that no other layer named `tied_name` uses.

    Rebuilding a model from its config (cloning, `from_config`, nested models
    loaded from `.keras`) recreates the source under its old name. The original
    source is still alive when the original model is, but it is already tied to
    a layer named like this one, which sets it apart from the new copy.
    """
    taken = {id(exclude)}
    for layer in list(_LIVE_TIED_LAYERS):
        if layer.tie_pending or layer.name == tied_name:
            taken.add(id(layer.source))
    candidates = _live_layers(name, class_name, taken)
    if len(candidates) > 1:
        # Unreachable layers awaiting collection must not count as rivals.
        gc.collect()
        candidates = _live_layers(name, class_name, taken)
    return candidates[0] if len(candidates) == 1 else None


def _live_layers(name, class_name, taken) -> list:
    found = []
    for obj in gc.get_objects():
        # `type()` rather than `isinstance`: some module proxies override
        # `__class__` with a warning or an error.
        if not issubclass(type(obj), keras.layers.Layer):
            continue
        if (
            obj.name == name
            and type(obj).__name__ == class_name
            and id(obj) not in taken
        ):
            found.append(obj)
    return found


def _pending_message(layer: TiedLayer) -> str:
    return (
        f"Layer '{layer.name}' is tied to a layer named "
        f"'{layer._pending_source_name}', but after this model was rebuilt from "
        "its config that layer could not be identified (it is not upstream of "
        f"'{layer.name}' and no unique live layer of that name is free). "
        "Running now would silently use an untied copy. Call "
        "`keras_tether.ties.retie(model)` on the model that holds both layers, "
        "or pass the source layer explicitly."
    )
