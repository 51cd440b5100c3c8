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
from keras_tether.layers import ReversibleConv2D

AUTOENCODER_TARGET = 1.05


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the tying scenarios."""

    autoencoder_input: int
    autoencoder_units: tuple[int, ...]
    autoencoder_batch: int
    conv_image: int
    conv_filters: tuple[int, ...]
    conv_batch: int


FULL = Sizes(
    autoencoder_input=784,
    autoencoder_units=(256, 64),
    autoencoder_batch=1024,
    conv_image=28,
    conv_filters=(16, 32),
    conv_batch=256,
)

QUICK = Sizes(
    autoencoder_input=8,
    autoencoder_units=(8, 4),
    autoencoder_batch=16,
    conv_image=8,
    conv_filters=(4, 8),
    conv_batch=8,
)


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
        ("tied", "tied (ReversibleDense)", tied),
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


def tied_conv_autoencoder(context: Context) -> Comparison:
    """A strided convolutional autoencoder, tied and untied."""
    sizes = QUICK if context.quick else FULL
    rng = np.random.default_rng(3)
    image = sizes.conv_image
    shape = (sizes.conv_batch, image, image, 1)
    (x,) = tensors([rng.random(shape).astype("float32")])
    filters = list(sizes.conv_filters)

    inputs = keras.Input(shape=(image, image, 1))
    convs = [
        ReversibleConv2D(
            size,
            3,
            strides=2,
            padding="same",
            activation="relu",
            reverse_activation=None if index == 0 else "relu",
        )
        for index, size in enumerate(filters)
    ]
    h = inputs
    for conv in convs:
        h = conv(h)
    for conv in reversed(convs):
        h = conv(h, reverse=True)
    tied = keras.Model(inputs, h, name="tied_conv_autoencoder")

    layers: list[Any] = [keras.Input(shape=(image, image, 1))]
    layers += [
        keras.layers.Conv2D(size, 3, strides=2, padding="same", activation="relu")
        for size in filters
    ]
    channels = [1, *filters[:-1]]
    for index in reversed(range(len(filters))):
        layers.append(
            keras.layers.Conv2DTranspose(
                channels[index],
                3,
                strides=2,
                padding="same",
                activation=None if index == 0 else "relu",
            )
        )
    untied = keras.Sequential(layers, name="untied_conv_autoencoder")
    candidates = []
    for key, label, model in (
        ("tied", "tied (ReversibleConv2D)", tied),
        ("untied", "untied (Conv2D, Conv2DTranspose)", untied),
    ):
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, train_step(model, x, x)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "tied conv autoencoder",
            timing,
            "tied",
            "untied",
            baseline_kind="keras-layers",
            target=AUTOENCODER_TARGET,
        )
    ]
    details = {
        "name": "tied conv autoencoder",
        "description": (
            f"convolutional autoencoder {image}x{image}x1 -> "
            + " -> ".join(f"{size} filters" for size in filters)
            + " (3x3, strides 2, relu) and its mirror, whole training step "
            "with adam and mse"
        ),
        "batch_size": sizes.conv_batch,
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


SCENARIOS = (tied_autoencoder, tied_conv_autoencoder)
