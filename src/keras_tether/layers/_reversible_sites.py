"""Refusing the uses of a reversible layer that a rebuilt model would split.

A reversible layer keeps its tie because one object is called at both sites.
Keras rebuilds a model (`clone_model`, `from_config`, `.keras` loading) from
configs: a functional graph deserializes each of its layers once, and a
custom layer (or subclassed model) builds again whatever it creates in its
`__init__` or receives in its config. A layer that is called both by the
graph and by a custom layer, or by two custom layers, therefore comes back as
two objects with two kernels. These checks find the layer that calls a
reversible layer from Python's own call stack: the innermost frame that runs
a method of another Keras layer.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import keras
from keras import activations, constraints, initializers, regularizers

_GRAPH = "graph"


def _calling_layers(layer: keras.layers.Layer):
    """The innermost other Keras layer whose method is running, and the one
    running around that one (each `None` if there is none)."""
    found = []
    frame = inspect.currentframe()
    try:
        frame = frame.f_back if frame is not None else None
        while frame is not None and len(found) < 2:
            caller = frame.f_locals.get("self")
            if (
                isinstance(caller, keras.layers.Layer)
                and caller is not layer
                and not any(caller is seen for seen in found)
            ):
                found.append(caller)
            frame = frame.f_back
    finally:
        del frame
    found += [None, None]
    return found[0], found[1]


def _is_graph(layer: keras.layers.Layer) -> bool:
    # A functional model or a `Sequential` serializes each layer it calls
    # once and shares it between its call sites.
    return isinstance(layer, keras.Function | keras.Sequential)


def _describe(site) -> str:
    if site == _GRAPH:
        return "as a node of a functional or Sequential model"
    return f"inside layer '{site.name}' ({type(site).__name__})"


class CallSites:
    """Where a reversible layer is created and called, checked call by call."""

    def __init__(self, layer: keras.layers.Layer):
        caller, _ = _calling_layers(layer)
        # A layer created in another layer's `__init__` or `build` is created
        # again when that layer is rebuilt: it belongs to that layer. Layers
        # are held weakly so that this record keeps no model alive.
        owner = None if caller is None or _is_graph(caller) else caller
        self._owner = None if owner is None else weakref.ref(owner)
        self._site = self._owner
        # (model, nested model) pairs: a functional model that holds this
        # layer as a node and is itself a layer of another model.
        self._nested_graphs: list[tuple[weakref.ref, weakref.ref]] = []

    @property
    def owner(self):
        return None if self._owner is None else self._owner()

    @property
    def site(self):
        if self._site is None or self._site == _GRAPH:
            return self._site
        return self._site()

    def check(self, layer: keras.layers.Layer, inputs) -> None:
        """Checks a call of `layer` (from its `__call__`)."""
        caller, outer = _calling_layers(layer)
        if caller is None:
            # Eager calls from the top level make no node anyone rebuilds.
            if not isinstance(inputs, keras.KerasTensor):
                return
            self._check_site(layer, _GRAPH)
        elif caller is self.owner or not _is_graph(caller):
            self._check_site(layer, caller)
        else:
            self._check_site(layer, _GRAPH)
            if outer is not None:
                self._check_nested(layer, caller, outer)

    def check_config(self, layer: keras.layers.Layer) -> None:
        """Checks a serialization of `layer` (from its `get_config`).

        Cloning or saving a model serializes each nested model on its own,
        from inside the model that holds it.
        """
        caller, outer = _calling_layers(layer)
        if caller is not None and outer is not None and _is_graph(caller):
            self._check_nested(layer, caller, outer)

    def _check_nested(self, layer, graph, outer) -> None:
        known = [(o(), g()) for o, g in self._nested_graphs]
        known = [(o, g) for o, g in known if o is not None and g is not None]
        for known_outer, known_graph in known:
            if known_outer is not outer:
                continue
            if known_graph is graph:
                return
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) is a node of "
                f"two models, '{known_graph.name}' and '{graph.name}', that "
                f"are both layers of '{outer.name}'. Keras rebuilds each "
                "nested model from its own config (clone_model, from_config, "
                "`.keras` loading), so the rebuilt model would hold two "
                "copies of the layer, each with its own kernel, and the tie "
                "would be lost. Call both directions in one functional model "
                "(that model may then be nested), or in one custom layer "
                "that owns the layer."
            )
        self._nested_graphs.append((weakref.ref(outer), weakref.ref(graph)))

    def _check_site(self, layer, site) -> None:
        first = self.site
        if first is None:
            self._site = site if site == _GRAPH else weakref.ref(site)
            return
        if site is first:
            return
        if self.owner is not None and first is self.owner:
            where = f"is created by layer '{first.name}' ({type(first).__name__})"
        else:
            where = f"is already called {_describe(first)}"
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) {where} and is "
            f"now called {_describe(site)}. A rebuilt model (clone_model, "
            "from_config, `.keras` loading) would hold two copies of it, "
            "each with its own kernel, and the tie would be lost. Call both "
            "directions at the same level: both inside the layer that owns "
            "it (`self.dense(x)` and `self.dense(y, reverse=True)` in its "
            "`call`), or both in the functional model (create the layer "
            "outside any other layer and call it at both sites)."
        )


class ReversibleCalls:
    """What every reversible layer does on a call, before Keras' `__call__`.

    Mixed in before the Keras layer class; it also adds the reverse
    direction's arguments to the config. The subclass sets
    `self._call_sites = CallSites(self)` in its `__init__`, defines
    `_check_features(inputs, reverse)`, and checks its call sites at the
    start of `call` too: wrappers such as `TimeDistributed` call `call`
    directly.
    """

    def __call__(self, inputs, *args, reverse: bool = False, **kwargs):
        if not isinstance(reverse, bool):
            raise TypeError(
                f"Expected `reverse` to be a boolean. Received: reverse={reverse!r}"
            )
        if reverse and not self.built:
            raise ValueError(
                f"Layer '{self.name}' must be built before it is called with "
                "`reverse=True`: the shape it maps back to is unknown until "
                "then. Call it forward first, or call `build(input_shape)`. "
                f"Received: reverse={reverse} on an unbuilt layer"
            )
        if self.built:
            self._check_features(inputs, reverse)
        if isinstance(inputs, keras.KerasTensor):
            # A symbolic call runs `compute_output_spec`, not `call`.
            self._call_sites.check(self, inputs)
        direction = "reverse" if reverse else "forward"
        if direction not in self._uses:
            self._uses = tuple(
                d for d in ("forward", "reverse") if d in (*self._uses, direction)
            )
        return super().__call__(inputs, *args, reverse=reverse, **kwargs)

    @property
    def uses(self) -> tuple[str, ...]:
        """The directions this layer has been called in, in order."""
        return self._uses

    def get_config(self) -> dict[str, Any]:
        self._call_sites.check_config(self)
        config = super().get_config()
        config.update(
            {
                "reverse_activation": activations.serialize(self.reverse_activation),
                "reverse_use_bias": self.reverse_use_bias,
                "reverse_bias_initializer": initializers.serialize(
                    self.reverse_bias_initializer
                ),
                "reverse_bias_regularizer": regularizers.serialize(
                    self.reverse_bias_regularizer
                ),
                "reverse_bias_constraint": constraints.serialize(
                    self.reverse_bias_constraint
                ),
            }
        )
        return config
