"""Parametrization scenarios: a constrained Dense against plain and projected ones."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import numpy as np

from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios._data import random, tensors
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether import parametrize
from keras_tether.layers import DenseTranspose, Parametrized

# Largest step-time ratios against the plain Dense that meet the targets.
TARGETS = {"positive": 1.3, "weight_norm": 1.3, "orthogonal": 3.0}


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the parametrization scenarios."""

    units: int
    batch: int


FULL = Sizes(units=256, batch=256)

QUICK = Sizes(units=8, batch=16)


class OrthogonalProjection(keras.constraints.Constraint):
    """The nearest orthogonal matrix, as a constraint: what Keras users write."""

    def __call__(self, w):
        u, _, v = keras.ops.svd(w, full_matrices=False)
        return keras.ops.matmul(u, v)


def _model(units: int, layer: keras.layers.Layer, name: str) -> keras.Model:
    inputs = keras.Input((units,))
    return keras.Model(inputs, layer(inputs), name=name)


def _candidates(units: int):
    """(key, label, layer) of every compared model, plain first."""

    def dense(**kwargs):
        return keras.layers.Dense(units, **kwargs)

    def wrapped(p):
        return Parametrized(dense(), {"kernel": p})

    return [
        ("plain", "Dense", dense()),
        ("positive", "Parametrized Positive", wrapped(parametrize.Positive())),
        (
            "positive_projected",
            "Dense + NonNeg constraint",
            dense(kernel_constraint=keras.constraints.NonNeg()),
        ),
        ("weight_norm", "Parametrized WeightNorm", wrapped(parametrize.WeightNorm())),
        (
            "unit_norm_projected",
            "Dense + UnitNorm constraint",
            dense(kernel_constraint=keras.constraints.UnitNorm(axis=0)),
        ),
        ("orthogonal", "Parametrized Orthogonal", wrapped(parametrize.Orthogonal())),
        (
            "orthogonal_qr",
            "Parametrized Orthogonal (QR)",
            wrapped(parametrize.Orthogonal(method="qr")),
        ),
        (
            "orthogonal_projected",
            "Dense + orthogonal projection (SVD)",
            dense(kernel_constraint=OrthogonalProjection()),
        ),
        ("spectral", "Parametrized SpectralNorm", wrapped(parametrize.SpectralNorm())),
        (
            "spectral_keras",
            "keras SpectralNormalization",
            keras.layers.SpectralNormalization(dense()),
        ),
    ]


# (ours, projected, Keras or other-map counterpart) pairs reported against each other.
COUNTERPARTS = (
    ("positive", "positive_projected"),
    ("weight_norm", "unit_norm_projected"),
    ("orthogonal", "orthogonal_projected"),
    ("spectral", "spectral_keras"),
    ("orthogonal", "orthogonal_qr"),
)


def training_step(context: Context) -> Comparison:
    """A training step of one parametrized Dense, against plain and projected."""
    sizes = QUICK if context.quick else FULL
    rng = np.random.default_rng(5)
    x, y = tensors(
        [
            random((sizes.batch, sizes.units), rng),
            random((sizes.batch, sizes.units), rng),
        ]
    )
    # The map alone: the same Orthogonal layer trained on a batch of one, so
    # that what remains of the step is mostly P, its gradient and Adam. It
    # bounds from below what an orthogonal kernel adds to a step.
    one_x, one_y = tensors(
        [random((1, sizes.units), rng), random((1, sizes.units), rng)]
    )
    map_alone = Parametrized(
        keras.layers.Dense(sizes.units), {"kernel": parametrize.Orthogonal()}
    )
    candidates = []
    for key, label, layer in _candidates(sizes.units):
        model = _model(sizes.units, layer, key)
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    model = _model(sizes.units, map_alone, "orthogonal_map")
    model.compile(optimizer="adam", loss="mse")
    candidates.append(
        Candidate(
            "orthogonal_map",
            "Parametrized Orthogonal on a batch of 1",
            model,
            train_step(model, one_x, one_y),
        )
    )
    timing = context.time(candidates)
    rows = []
    for key in ("positive", "weight_norm", "orthogonal", "spectral", "orthogonal_qr"):
        rows.append(
            make_row(
                "parametrized Dense training step",
                timing,
                key,
                "plain",
                baseline_kind="keras-layers",
                target=TARGETS.get(key),
            )
        )
    for ours, counterpart in COUNTERPARTS:
        rows.append(
            make_row(
                "parametrized Dense training step",
                timing,
                ours,
                counterpart,
                baseline_kind=(
                    "other-option" if counterpart == "orthogonal_qr" else "keras-layers"
                ),
                target=None,
            )
        )
    rows.append(
        make_row(
            "parametrized Dense training step",
            timing,
            "orthogonal_map",
            "plain",
            baseline_kind="keras-layers",
            target=None,
        )
    )
    details = {
        "name": "parametrized Dense training step",
        "description": (
            f"Dense {sizes.units}x{sizes.units} with a constrained kernel, whole "
            "training step with adam and mse: Parametrized against a plain Dense "
            "and against the same constraint as a keras.constraints projection; "
            "Orthogonal is the Cayley map, Orthogonal (QR) the QR map; the "
            "Orthogonal layer on a batch of 1 times mostly the map itself"
        ),
        "batch_size": sizes.batch,
        **timing,
    }
    return Comparison(details, rows)


def inference(context: Context) -> Comparison:
    """What a parametrized kernel costs at inference, and after baking it in."""
    sizes = QUICK if context.quick else FULL
    rng = np.random.default_rng(6)
    (x,) = tensors([random((sizes.batch, sizes.units), rng)])
    candidates = []
    for key, label, p in (
        ("orthogonal", "Parametrized Orthogonal", parametrize.Orthogonal()),
        ("positive", "Parametrized Positive", parametrize.Positive()),
        ("weight_norm", "Parametrized WeightNorm", parametrize.WeightNorm()),
    ):
        model = _model(
            sizes.units,
            Parametrized(keras.layers.Dense(sizes.units), {"kernel": p}),
            key,
        )
        candidates.append(
            Candidate(key, label, model, lambda model=model: model.predict_on_batch(x))
        )
        twin = _model(
            sizes.units,
            Parametrized(keras.layers.Dense(sizes.units), {"kernel": type(p)()}),
            f"{key}_baked",
        )
        inner = twin.layers[-1].remove(bake=True)
        plain = _model(sizes.units, inner, f"{key}_served")
        candidates.append(
            Candidate(
                f"{key}_baked",
                f"{label}, removed and baked",
                plain,
                lambda model=plain: model.predict_on_batch(x),
            )
        )
    plain = _model(sizes.units, keras.layers.Dense(sizes.units), "plain")
    candidates.append(
        Candidate("plain", "Dense", plain, lambda: plain.predict_on_batch(x))
    )
    candidates.extend(_tied_candidates(sizes, x))
    timing = context.time(candidates)
    rows = []
    for key in ("orthogonal", "positive", "weight_norm"):
        for baseline in ("plain", f"{key}_baked"):
            rows.append(
                make_row(
                    "parametrized Dense inference step",
                    timing,
                    key,
                    baseline,
                    baseline_kind="keras-layers",
                    target=None,
                )
            )
    rows.append(
        make_row(
            "parametrized Dense inference step",
            timing,
            "tied_cached",
            "tied",
            baseline_kind="other-option",
            target=None,
        )
    )
    details = {
        "name": "parametrized Dense inference step",
        "description": (
            f"predict_on_batch of a Dense {sizes.units}x{sizes.units} computing "
            "its kernel P(free) at every call, against a plain Dense and against "
            "the same layer after remove(bake=True); and a tied autoencoder "
            "(DenseTranspose of an orthogonal Dense) predicted inside "
            "parametrize.cached(), which computes the kernel once, against "
            "outside it"
        ),
        "batch_size": sizes.batch,
        **timing,
    }
    return Comparison(details, rows)


def _tied_candidates(sizes: Sizes, x) -> list[Candidate]:
    """A tied autoencoder predicted with and without `parametrize.cached()`."""
    candidates = []
    for key, label, context in (
        ("tied", "Tied orthogonal autoencoder", contextlib.nullcontext),
        ("tied_cached", "Tied orthogonal autoencoder, cached", parametrize.cached),
    ):
        encoder = keras.layers.Dense(sizes.units // 2)
        wrapper = Parametrized(encoder, {"kernel": parametrize.Orthogonal()})
        inputs = keras.Input((sizes.units,))
        model = keras.Model(inputs, DenseTranspose(encoder)(wrapper(inputs)), name=key)

        def step(model=model, context=context):
            with context():
                return model.predict_on_batch(x)

        candidates.append(Candidate(key, label, model, step))
    return candidates


SCENARIOS = (training_step, inference)
