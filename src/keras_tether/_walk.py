"""Walking a model's layers, nested models included."""

from __future__ import annotations

import keras


def all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer of `model` and of its nested models, each once, in order."""
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        found.append(layer)
        for inner in getattr(layer, "layers", None) or []:
            visit(inner)

    for layer in getattr(model, "layers", None) or []:
        visit(layer)
    return found
