"""The one walk over a model's layers, used by everything that searches a model.

A layer is reached wherever Keras tracks it: in a functional or `Sequential`
model, in a subclassed model, as an attribute of a custom layer (alone, in a
list or in a dict), and inside wrappers such as `Bidirectional`,
`TimeDistributed` or `keras_tether.layers.Parametrized`. Each layer is listed
once, parents before their sublayers, siblings in the order Keras tracks them.
"""

from __future__ import annotations

import keras


def all_layers(
    model: keras.layers.Layer, include_self: bool = False
) -> list[keras.layers.Layer]:
    """Every layer nested in `model`, each once, parents first.

    Args:
        model: A Keras model or layer.
        include_self: Whether `model` itself opens the list.

    Returns:
        A list of layers, without repetition (a layer shared by two parents
        is listed where it is first met).
    """
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()
    # Depth-first with an explicit stack: models can nest deeper than
    # Python's recursion limit allows for a comfortable margin.
    stack = [model] if include_self else list(reversed(_sublayers(model)))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append(layer)
        stack.extend(reversed(_sublayers(layer)))
    return found


def _sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers `layer` holds directly, in the order Keras tracks them.

    A model answers through its public `layers`. Keras has no public way to
    list the sublayers of any other layer (a custom layer's attributes, a
    wrapper's inner layer): Python attributes are no substitute, because the
    torch backend keeps sublayers in torch's module registry, out of the
    instance dictionary. So this is the one place that reads Keras' own
    tracking, through `_flatten_layers`, the method Keras' `summary` and
    `quantize` use for the same walk.
    """
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        raise RuntimeError(
            f"Cannot list the sublayers of layer '{layer.name}': this version "
            f"of Keras ({keras.__version__}) has no `Layer._flatten_layers`, "
            "which keras-tether relies on to find layers nested in custom "
            "layers and wrappers. Please report this with your Keras version."
        )
    return list(flatten(include_self=False, recursive=False))
