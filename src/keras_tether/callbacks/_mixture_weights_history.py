"""A callback that records the mixture weights of the mixing layers of a model."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import keras
import numpy as np

from keras_tether._walk import all_layers
from keras_tether.layers._gated_average import GatedAverage
from keras_tether.layers._weighted_average import WeightedAverage

# The layers whose mixture is recorded: learned weights, or moving mean gates.
MIXING_LAYERS = (WeightedAverage, GatedAverage)


def read_mixture(layer: WeightedAverage | GatedAverage) -> np.ndarray:
    """A NumPy copy of a mixing layer's mixture, as the callback records it.

    `WeightedAverage.mixture_weights`, or `GatedAverage.moving_mean_gates`.
    """
    if isinstance(layer, GatedAverage):
        return np.array(
            keras.ops.convert_to_numpy(layer.moving_mean_gates), dtype="float32"
        )
    return np.array(layer.mixture_weights, copy=True)


class MixtureWeightsHistory(keras.callbacks.Callback):
    """Records the mixture weights of the mixing layers while training.

    At the end of every epoch the callback reads the mixture of each mixing
    layer of the model: the learned `mixture_weights` of a `WeightedAverage`,
    the `moving_mean_gates` of a `GatedAverage`. It finds them wherever the
    model holds them (nested models, custom layers, wrappers), or records
    only the layers named in `layers`. The weights are kept in memory and,
    with `csv_path`, appended to a CSV file, so you can watch which branches
    a mixture learns to trust.

    The weights before training are recorded too, when training begins, in
    `initial` (in memory) and as rows with epoch `-1` (in the CSV file), so
    `history[name][i]` always belongs to epoch `epochs[i]`. Calling `fit`
    again with the same callback appends to the record and keeps the first
    `initial`; pass `initial_epoch` to `fit` to keep the epoch numbers rising.

    The CSV file is created (or overwritten) when training first begins. Its
    columns are `epoch`, `layer`, then `w_0`, ..., `w_{K-1}`: the layer's
    weights flattened in row-major order, so per-feature weights of shape
    `(N, features)` fill `N * features` columns. When the recorded layers hold
    different numbers of weights, shorter rows leave the last cells empty.

    Args:
        csv_path: Optional string or path-like, the CSV file to write.
            Defaults to `None` (keep the record in memory only).
        layers: Optional string or sequence of strings, the names of the
            mixing layers to record. Defaults to `None`, every
            `WeightedAverage` and `GatedAverage` layer of the model.

    Attributes:
        history: Dictionary mapping each recorded layer's name to a list of
            NumPy arrays, the layer's mixture after each epoch.
        epochs: List of the epoch indices recorded, in the order of `history`.
        initial: Dictionary mapping each recorded layer's name to its
            mixture when training first began.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether.callbacks import MixtureWeightsHistory
    >>> from keras_tether.layers import WeightedAverage
    >>> inputs = [keras.Input(shape=(4,)) for _ in range(3)]
    >>> branches = [keras.layers.Dense(1)(x) for x in inputs]
    >>> model = keras.Model(inputs, WeightedAverage(name="mix")(branches))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = [np.ones((8, 4), dtype="float32")] * 3
    >>> recorder = MixtureWeightsHistory()
    >>> _ = model.fit(x, np.zeros((8, 1)), epochs=2, verbose=0,
    ...               callbacks=[recorder])
    >>> recorder.epochs
    [0, 1]
    >>> [weights.shape for weights in recorder.history["mix"]]
    [(3,), (3,)]
    >>> [round(float(w), 3) for w in recorder.initial["mix"]]
    [0.333, 0.333, 0.333]
    """

    def __init__(
        self,
        csv_path: str | os.PathLike | None = None,
        layers: str | Sequence[str] | None = None,
    ):
        super().__init__()
        if csv_path is not None and not isinstance(csv_path, str | os.PathLike):
            raise TypeError(
                "Expected `csv_path` to be a string, a path-like object or None. "
                f"Received: csv_path={csv_path!r} of type {type(csv_path).__name__}"
            )
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.layers = _layer_names(layers)
        self.history: dict[str, list[np.ndarray]] = {}
        self.epochs: list[int] = []
        self.initial: dict[str, np.ndarray] = {}
        self._recorded: list[WeightedAverage | GatedAverage] = []
        self._csv_width = 0

    def on_train_begin(self, logs=None):
        self._recorded = self._find_layers()
        if self.initial:
            return
        weights = self._read_weights()
        self.initial = weights
        if self.csv_path is not None:
            self._csv_width = max(w.size for w in weights.values())
            header = ["epoch", "layer"] + [f"w_{i}" for i in range(self._csv_width)]
            with open(self.csv_path, "w", newline="") as handle:
                csv.writer(handle).writerow(header)
            self._append_rows(-1, weights)

    def on_epoch_end(self, epoch, logs=None):
        weights = self._read_weights()
        self.epochs.append(int(epoch))
        for name, value in weights.items():
            self.history.setdefault(name, []).append(value)
        if self.csv_path is not None:
            self._append_rows(int(epoch), weights)

    def _read_weights(self) -> dict[str, np.ndarray]:
        return {layer.name: read_mixture(layer) for layer in self._recorded}

    def _append_rows(self, epoch: int, weights: dict[str, np.ndarray]) -> None:
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.writer(handle)
            for name, value in weights.items():
                cells = [repr(float(w)) for w in value.ravel()]
                cells += [""] * (self._csv_width - len(cells))
                writer.writerow([epoch, name, *cells])

    def _find_layers(self) -> list[WeightedAverage | GatedAverage]:
        found = [
            layer
            for layer in all_layers(self.model)
            if isinstance(layer, MIXING_LAYERS)
        ]
        if self.layers is None:
            if not found:
                raise ValueError(
                    "`MixtureWeightsHistory` found no `WeightedAverage` or "
                    f"`GatedAverage` layer "
                    f"in model '{self.model.name}', so it has nothing to record."
                )
            names = [layer.name for layer in found]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(
                    "`MixtureWeightsHistory` records layers by name, but model "
                    f"'{self.model.name}' holds several mixing layers "
                    f"named {duplicates}. Rename them, or pass `layers` to pick "
                    "uniquely named ones."
                )
            return found
        by_name = {layer.name: layer for layer in found}
        missing = [name for name in self.layers if name not in by_name]
        if missing:
            raise ValueError(
                "Expected `layers` to name `WeightedAverage` or `GatedAverage` "
                f"layers of model '{self.model.name}'; these are not: {missing}. "
                f"Its mixing layers are {sorted(by_name)}. "
                f"Received: layers={list(self.layers)!r}"
            )
        return [by_name[name] for name in self.layers]


def _layer_names(layers) -> tuple[str, ...] | None:
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not all(
        isinstance(name, str) for name in layers
    ):
        raise TypeError(
            "Expected `layers` to be a layer name or a sequence of layer "
            f"names (strings). Received: layers={layers!r}"
        )
    if not layers or not all(layers):
        raise ValueError(
            "Expected `layers` to be a layer name or a non-empty sequence of "
            f"layer names (non-empty strings). Received: layers={layers!r}"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(
            f"Expected `layers` to name each layer once. Received: layers={layers!r}"
        )
    return tuple(layers)
