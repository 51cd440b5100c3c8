"""Ensembles: N copies of a model as one `Ensemble` against N separate models.

The first comparison is the parallel scenario's question asked of whole
models: N two-layer MLPs (features -> hidden, relu -> classes) on one input,
mixed on the simplex. `Ensemble` holds the N MLPs as one layer, a
`Sequential` template computed as one vectorized call; the separate form
calls N `Sequential` MLPs; the `ParallelDense` form holds the same two
layers as two `ParallelDense`; and the floor is one `Dense(N * hidden,
relu)` and one `Dense(classes)`, the same products with no branch axis (not
the same model: a floor on the step time).

The second comparison trains 8 small CNNs (convolution, batch
normalization, pooling, dropout) on 8x8 digits as one `Ensemble` against 8
separate CNNs in one model, each trained on the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios._data import random, tensors
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether.layers import Ensemble, ParallelDense, WeightedAverage


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the ensemble scenarios."""

    branches: tuple[int, ...]
    batch: int
    features: int
    hidden: int
    classes: int
    cnn_members: int
    cnn_batch: int
    cnn_filters: int


FULL = Sizes(
    branches=(3, 16, 64, 256),
    batch=512,
    features=64,
    hidden=64,
    classes=10,
    cnn_members=8,
    cnn_batch=256,
    cnn_filters=16,
)
QUICK = Sizes(
    branches=(2, 3, 4, 5),
    batch=16,
    features=8,
    hidden=8,
    classes=4,
    cnn_members=2,
    cnn_batch=16,
    cnn_filters=4,
)

# Targets: never slower than the separate form; at N >= 16 within 1.25x of
# the floor; on torch 3x faster than the separate form at N = 16 training;
# the CNN ensemble 1.5x faster than the separate CNNs.
FLOOR_TARGET = 1.25
CNN_TARGET = 1 / 1.5


def _separate_target(backend: str, branches: int, training: bool) -> float:
    if training and branches == 16 and backend == "torch":
        return 1 / 3
    return 1.0


def _mlp(sizes: Sizes, name: str | None = None) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((sizes.features,)),
            keras.layers.Dense(sizes.hidden, activation="relu"),
            keras.layers.Dense(sizes.classes),
        ],
        name=name,
    )


def _models(sizes: Sizes, branches: int) -> dict[str, keras.Model]:
    members = [_mlp(sizes) for _ in range(branches)]

    inputs = keras.Input((sizes.features,))
    outputs = [member(inputs) for member in members]
    separate = keras.Model(inputs, WeightedAverage()(outputs), name="separate")

    inputs = keras.Input((sizes.features,))
    ensemble = Ensemble.from_models(members)
    mixed = WeightedAverage(branch_axis=1)(ensemble(inputs))
    ensembled = keras.Model(inputs, mixed, name="ensemble")

    inputs = keras.Input((sizes.features,))
    first = ParallelDense.from_layers([m.layers[0] for m in members])
    second = ParallelDense.from_layers(
        [m.layers[1] for m in members], per_branch_inputs=True
    )
    mixed = WeightedAverage(branch_axis=1)(second(first(inputs)))
    parallel = keras.Model(inputs, mixed, name="parallel")

    inputs = keras.Input((sizes.features,))
    hidden = keras.layers.Dense(branches * sizes.hidden, activation="relu")(inputs)
    floor = keras.Model(inputs, keras.layers.Dense(sizes.classes)(hidden), name="floor")
    return {
        "ensemble": ensembled,
        "separate": separate,
        "parallel": parallel,
        "floor": floor,
    }


def _labels(rng: np.random.Generator, batch: int, classes: int) -> np.ndarray:
    return np.eye(classes, dtype="float32")[rng.integers(0, classes, size=batch)]


def _compile(model: keras.Model) -> None:
    model.compile(
        optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    )


def _compare(context: Context, branches: int, training: bool) -> Comparison:
    sizes = QUICK if context.quick else FULL
    rng = np.random.default_rng(4)
    x, y = tensors(
        [
            random((sizes.batch, sizes.features), rng),
            _labels(rng, sizes.batch, sizes.classes),
        ]
    )
    models = _models(sizes, branches)
    labels = {
        "ensemble": "Ensemble(Sequential MLP) + WeightedAverage(branch_axis=1)",
        "separate": f"{branches} x Sequential MLP + WeightedAverage",
        "parallel": "ParallelDense x2 + WeightedAverage(branch_axis=1)",
        "floor": (
            f"Dense({branches * sizes.hidden}, relu) + Dense({sizes.classes}), "
            "the same products unstacked"
        ),
    }
    candidates = []
    for key, model in models.items():
        if training:
            _compile(model)
            step = train_step(model, x, y)
        else:
            step = _predict(model, x)
        candidates.append(Candidate(key, labels[key], model, step))
    timing = context.time(candidates)
    name = f"ensemble N={branches} {'training' if training else 'predict'}"
    details = {
        "name": name,
        "description": (
            f"{branches} two-layer MLPs ({sizes.features} -> {sizes.hidden}, "
            f"relu -> {sizes.classes}) on one input, mixed on the simplex: one "
            "Ensemble against separate models, two ParallelDense and the floor, "
            + (
                "training step (train_on_batch, adam, cross-entropy)"
                if training
                else "inference step (predict_on_batch)"
            )
        ),
        "branches": branches,
        "batch_size": sizes.batch,
        **timing,
    }
    target = _separate_target(context.backend, branches, training)
    rows = [
        make_row(
            name,
            timing,
            "ensemble",
            "separate",
            baseline_kind="keras-layers",
            target=target,
        ),
        make_row(
            name,
            timing,
            "ensemble",
            "parallel",
            baseline_kind="other-option",
            target=None,
        ),
        make_row(
            name,
            timing,
            "ensemble",
            "floor",
            baseline_kind="matrix-floor",
            target=FLOOR_TARGET if branches >= 16 else None,
        ),
    ]
    return Comparison(details, rows)


def _predict(model: keras.Model, x: Any):
    return lambda: model.predict_on_batch(x)


def _digits(sizes: Sizes) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        # Without scikit-learn, random images of the same shape time the
        # same computation.
        rng = np.random.default_rng(5)
        images = rng.random((sizes.cnn_batch, 8, 8, 1)).astype("float32")
        return images, _labels(rng, sizes.cnn_batch, 10)
    digits = load_digits()
    images = (digits.images[: sizes.cnn_batch] / 16.0).astype("float32")[..., None]
    labels = np.eye(10, dtype="float32")[digits.target[: sizes.cnn_batch]]
    return images, labels


def _cnn(sizes: Sizes) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(sizes.cnn_filters, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def cnn_members(context: Context) -> Comparison:
    """8 small CNNs on 8x8 digits: one `Ensemble` against 8 separate models."""
    sizes = QUICK if context.quick else FULL
    members = sizes.cnn_members
    images, labels = _digits(sizes)
    x, y = tensors([images, np.repeat(labels[:, None], members, axis=1)])
    separate_models = [_cnn(sizes) for _ in range(members)]

    inputs = keras.Input((8, 8, 1))
    stacked = keras.ops.stack([model(inputs) for model in separate_models], axis=1)
    separate = keras.Model(inputs, stacked, name="separate")
    inputs = keras.Input((8, 8, 1))
    ensemble = keras.Model(
        inputs, Ensemble.from_models(separate_models)(inputs), name="ensemble"
    )
    # The floor: one CNN doing the members' work as one batch, members times
    # as large, with no branch structure at all.
    floor = _cnn(sizes)
    x_floor, y_floor = tensors(
        [np.tile(images, (members, 1, 1, 1)), np.tile(labels, (members, 1))]
    )
    candidates = []
    for key, label, model, data in (
        ("ensemble", f"Ensemble of {members} CNNs", ensemble, (x, y)),
        ("separate", f"{members} separate CNNs", separate, (x, y)),
        ("floor", f"one CNN on {members}x the batch", floor, (x_floor, y_floor)),
    ):
        _compile(model)
        candidates.append(Candidate(key, label, model, train_step(model, *data)))
    timing = context.time(candidates)
    name = f"ensemble of {members} CNNs training"
    details = {
        "name": name,
        "description": (
            f"{members} CNNs (Conv2D {sizes.cnn_filters} filters, "
            "BatchNormalization, max pooling, Dropout 0.25, Dense 10) on 8x8 "
            "digits, each trained on the labels: one Ensemble against "
            "separate models and the floor (one CNN on a batch members times "
            "as large), training step (train_on_batch, adam, cross-entropy)"
        ),
        "branches": members,
        "batch_size": sizes.cnn_batch,
        **timing,
    }
    rows = [
        make_row(
            name,
            timing,
            "ensemble",
            "separate",
            baseline_kind="keras-layers",
            target=CNN_TARGET,
        ),
        make_row(
            name,
            timing,
            "ensemble",
            "floor",
            baseline_kind="batch-floor",
            target=None,
        ),
    ]
    return Comparison(details, rows)


def _scenario(branches_index: int, training: bool):
    def scenario(context: Context) -> Comparison:
        sizes = QUICK if context.quick else FULL
        return _compare(context, sizes.branches[branches_index], training)

    kind = "train" if training else "predict"
    scenario.__name__ = f"ensemble_{branches_index}_{kind}"
    return scenario


SCENARIOS = tuple(
    _scenario(index, training)
    for index in range(len(FULL.branches))
    for training in (True, False)
) + (cnn_members,)
