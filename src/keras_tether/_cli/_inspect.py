"""`keras-tether inspect`: the mixtures, ties and parameter savings of a model."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import keras
import numpy as np

from keras_tether import ties
from keras_tether._walk import all_layers
from keras_tether.callbacks._mixture_weights_history import (
    MIXING_LAYERS,
    read_mixture,
)
from keras_tether.layers import GatedAverage, WeightedAverage

# Mixture weights are shown to this many decimals.
DECIMALS = 4

_LEGACY_SUFFIXES = (".h5", ".hdf5")


class ModelReadError(Exception):
    """A file that cannot be read as a Keras model, with a one-line reason."""


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a `.keras` model with `safe_mode=True` for inspection.

    The training configuration is not restored (`compile=False`): inspection
    needs only the layers and their weights.

    Raises:
        ModelReadError: if `path` is missing, is not a Keras model file, or
            Keras cannot load it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelReadError("no such file")
    if os.path.isdir(path):
        # Keras reads a directory only if it holds an unzipped `.keras` model.
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelReadError("it is a folder, expected a .keras file")
    elif not path.lower().endswith(_LEGACY_SUFFIXES) and not zipfile.is_zipfile(path):
        raise ModelReadError(
            "not a .keras file, or a damaged one (expected the zip archive "
            "that `model.save` writes)"
        )
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types; the user needs one line
        raise ModelReadError(f"Keras could not load it: {_one_line(error)}") from error
    if not isinstance(model, keras.layers.Layer):
        raise ModelReadError(
            f"it holds a {type(model).__name__}, expected a Keras model"
        )
    return model


def describe_model(model: keras.Model) -> dict[str, Any]:
    """Describes the mixtures, the ties and the parameter count of `model`.

    Returns:
        A JSON-serializable dict with exactly the keys `mixtures` (one entry
        per `WeightedAverage` or `GatedAverage`, nested models included; a
        gated average's weights are its moving average of mean gates),
        `ties` (one entry per tie, from `keras_tether.ties.list_ties`) and
        `params`: `total` counts
        every shared variable once, `if_untied` counts a separate copy for
        every layer that uses it, and `saved_by_ties` is the difference.
    """
    mixtures = [_describe_mixture(layer) for layer in _mixing_layers(model)]
    records = ties.list_ties(model)
    total = ties.count_params(model)
    if_untied = total + _extra_params_if_untied(records)
    return {
        "mixtures": mixtures,
        "ties": [_describe_tie(record) for record in records],
        "params": {
            "total": total,
            "if_untied": if_untied,
            "saved_by_ties": if_untied - total,
        },
    }


def inspect_file(path: str | os.PathLike) -> dict[str, Any]:
    """Loads the model at `path` and describes it (see `describe_model`)."""
    return describe_model(load_model(path))


def format_report(report: dict[str, Any], title: str | None = None) -> str:
    """Renders a `describe_model` report as text for a terminal."""
    lines = [title, ""] if title else []
    mixtures = report["mixtures"]
    lines.append(f"Mixtures ({len(mixtures)}):")
    if not mixtures:
        lines.append("  none")
    for mixture in mixtures:
        lines.append(
            f"  {mixture['layer']}  {mixture['class']}  "
            f"simplex={mixture['simplex']}  inputs={mixture['inputs']}"
        )
        weights = np.asarray(mixture["weights"])
        label = "mean gates" if mixture["class"] == "GatedAverage" else "weights"
        if weights.ndim == 1:
            lines.append(f"      {label}: {_format_vector(weights)}")
        else:
            lines.append(
                f"      per-feature weights, shape {weights.shape}; mean over "
                f"features: {_format_vector(weights.mean(axis=-1))}"
            )
    lines.append("")
    tie_list = report["ties"]
    lines.append(f"Ties ({len(tie_list)}):")
    if not tie_list:
        lines.append("  none")
    for tie in tie_list:
        uses = ", ".join(tie["uses"]) or "not called yet"
        lines.append(f"  {tie['layer']} ({tie['layer_class']})  uses: {uses}")
        for path, shape in zip(tie["variables"], tie["shapes"], strict=True):
            lines.append(f"      {path}  shape {tuple(shape)}")
    lines.append("")
    params = report["params"]
    saved = params["saved_by_ties"]
    share = f" ({saved / params['if_untied']:.1%})" if params["if_untied"] else ""
    lines.append("Parameters:")
    lines.append(f"  counting each shared variable once:  {params['total']:,}")
    lines.append(f"  if every tie were a separate copy:   {params['if_untied']:,}")
    lines.append(f"  saved by ties:                       {saved:,}{share}")
    return "\n".join(lines)


def _mixing_layers(
    model: keras.layers.Layer,
) -> list[WeightedAverage | GatedAverage]:
    return [layer for layer in all_layers(model) if isinstance(layer, MIXING_LAYERS)]


def _describe_mixture(layer: WeightedAverage | GatedAverage) -> dict[str, Any]:
    weights = np.asarray(read_mixture(layer), dtype=np.float64)
    return {
        "layer": layer.name,
        "class": type(layer).__name__,
        "simplex": layer.simplex.name,
        "inputs": int(weights.shape[0]),
        "shape": list(weights.shape),
        "weights": np.round(weights, DECIMALS).tolist(),
    }


def _describe_tie(record: ties.Tie) -> dict[str, Any]:
    return {
        "layer": record.layer,
        "layer_class": record.layer_class,
        "variables": list(record.variables),
        "shapes": [list(shape) for shape in record.shapes],
        "uses": list(record.uses),
    }


def _extra_params_if_untied(records: list[ties.Tie]) -> int:
    # A layer used in both directions would need a second kernel for the
    # other direction if it were untied.
    extra = 0
    for record in records:
        if len(record.uses) == 2:
            extra += sum(int(np.prod(shape, dtype=np.int64)) for shape in record.shapes)
    return extra


def _format_vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:.{DECIMALS}f}" for value in values) + "]"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    reason = text or type(error).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."
