"""Tying scenarios: tied layers against the same model with untied weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios._data import tensors
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether import ties

AUTOENCODER_TARGET = 1.05


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the tying scenarios."""

    autoencoder_input: int
    autoencoder_units: tuple[int, ...]
    autoencoder_batch: int


FULL = Sizes(autoencoder_input=784, autoencoder_units=(256, 64), autoencoder_batch=1024)

QUICK = Sizes(autoencoder_input=8, autoencoder_units=(8, 4), autoencoder_batch=16)


def tied_autoencoder(context: Context) -> Comparison:
    """A dense autoencoder with its decoder tied to its encoder, and untied."""
    sizes = QUICK if context.quick else FULL
    rng = np.random.default_rng(2)
    shape = (sizes.autoencoder_batch, sizes.autoencoder_input)
    (x,) = tensors([rng.random(shape).astype("float32")])
    units = list(sizes.autoencoder_units)
    tied = ties.tied_autoencoder(sizes.autoencoder_input, units)
    layers: list[Any] = [keras.Input(shape=(sizes.autoencoder_input,))]
    layers += [keras.layers.Dense(size, activation="relu") for size in units]
    layers += [keras.layers.Dense(size, activation="relu") for size in units[-2::-1]]
    layers.append(keras.layers.Dense(sizes.autoencoder_input))
    untied = keras.Sequential(layers, name="untied_autoencoder")
    candidates = []
    for key, label, model in (
        ("tied", "tied (DenseTranspose)", tied),
        ("untied", "untied (Dense)", untied),
    ):
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, train_step(model, x, x)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "tied autoencoder",
            timing,
            "tied",
            "untied",
            baseline_kind="keras-layers",
            target=AUTOENCODER_TARGET,
        )
    ]
    details = {
        "name": "tied autoencoder",
        "description": (
            f"dense autoencoder {sizes.autoencoder_input}->"
            + "->".join(str(size) for size in units)
            + " (relu) and its mirror, whole training step with adam and mse"
        ),
        "batch_size": sizes.autoencoder_batch,
        "kernel_params": {
            "tied": _kernel_params(tied),
            "untied": _kernel_params(untied),
        },
        "total_params": {
            "tied": ties.count_params(tied),
            "untied": ties.count_params(untied),
        },
        **timing,
    }
    return Comparison(details, rows)


def _kernel_params(model: keras.Model) -> int:
    kernels = {id(w): w for w in model.weights if w.path.endswith("kernel")}
    return sum(int(np.prod(w.shape)) for w in kernels.values())


SCENARIOS = (tied_autoencoder,)
