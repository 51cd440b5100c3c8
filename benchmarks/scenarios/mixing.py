"""Mixing scenarios: `WeightedAverage` against what a user could write instead."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios._data import random, seed_data, tensors
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether.layers import WeightedAverage

# Largest ratios ours / baseline that meet the targets. In the stress test
# the combination is all the work there is: `WeightedAverage` should cost no
# more than what a user writes by hand with `keras.ops` for the same trainable
# mixture, and less than the seed's formula, which stacks its inputs. `Add`
# trains nothing and never reads its inputs again for a weight gradient, so
# it is a floor to report, not a target any trainable mixture can meet.
HAND_WRITTEN_TARGET = 1.10
SEED_FORMULA_TARGET = 1.00
# In whole models the mixture is a small part of the step.
SEED_TARGET = 1.05


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the mixing scenarios."""

    stress_inputs: int
    stress_batch: int
    stress_features: int
    seed_branches: int
    seed_batch: int
    seed_features: int
    seed_hidden: int
    seed_classes: int


FULL = Sizes(
    stress_inputs=8,
    stress_batch=2048,
    stress_features=512,
    seed_branches=3,
    seed_batch=1000,
    seed_features=100,
    seed_hidden=32,
    seed_classes=10,
)

QUICK = Sizes(
    stress_inputs=8,
    stress_batch=16,
    stress_features=8,
    seed_branches=3,
    seed_batch=16,
    seed_features=8,
    seed_hidden=8,
    seed_classes=8,
)


class SeedFormula(keras.layers.Layer):
    """The seed's weighted sum: stack the inputs on a new last axis and reduce.

    This is the accepted Stack Overflow answer's formula, changed only so that
    its logits are a tracked variable (created with `add_weight`): each input
    is expanded to `(..., 1)`, the inputs are concatenated along that axis,
    multiplied by `softmax(logits)` and summed over it. It materializes a
    tensor `N` times the size of one input, which `WeightedAverage` avoids.
    """

    def build(self, input_shape):
        self.logits = self.add_weight(
            name="logits", shape=(len(input_shape),), initializer="zeros"
        )

    def call(self, inputs):
        stacked = ops.concatenate([ops.expand_dims(x, -1) for x in inputs], axis=-1)
        return ops.sum(stacked * ops.softmax(self.logits), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class HandWrittenLoop(keras.layers.Layer):
    """The plain form a user writes: softmax of logits, then `sum_i w_i * x_i`."""

    def build(self, input_shape):
        self.logits = self.add_weight(
            name="logits", shape=(len(input_shape),), initializer="zeros"
        )

    def call(self, inputs):
        weights = ops.softmax(self.logits)
        output = inputs[0] * weights[0]
        for index in range(1, len(inputs)):
            output = output + inputs[index] * weights[index]
        return output

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class HandWrittenStack(keras.layers.Layer):
    """The vectorized form: stack the inputs first, contract with the weights."""

    def build(self, input_shape):
        self.logits = self.add_weight(
            name="logits", shape=(len(input_shape),), initializer="zeros"
        )

    def call(self, inputs):
        stacked = ops.stack(inputs, axis=0)
        return ops.tensordot(ops.softmax(self.logits), stacked, axes=1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def _sizes(context: Context) -> Sizes:
    return QUICK if context.quick else FULL


def _stress_models(
    sizes: Sizes, with_alternatives: bool
) -> list[tuple[str, str, keras.Model]]:
    combiners = [
        ("weighted_average", "WeightedAverage", WeightedAverage),
        ("add", "Add", keras.layers.Add),
    ]
    if with_alternatives:
        combiners += [
            ("loop", "hand-written loop", HandWrittenLoop),
            ("stack", "hand-written stack+tensordot", HandWrittenStack),
            ("seed_formula", "seed formula", SeedFormula),
        ]
    built = []
    for key, label, combiner in combiners:
        inputs = [
            keras.Input(shape=(sizes.stress_features,), name=f"input_{index}")
            for index in range(sizes.stress_inputs)
        ]
        built.append((key, label, keras.Model(inputs, combiner()(inputs), name=key)))
    return built


def _stress_data(sizes: Sizes) -> tuple[list, Any]:
    rng = np.random.default_rng(0)
    shape = (sizes.stress_batch, sizes.stress_features)
    x = tensors([random(shape, rng) for _ in range(sizes.stress_inputs)])
    (y,) = tensors([random(shape, rng)])
    return x, y


def _describe_stress(sizes: Sizes, name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "inputs": sizes.stress_inputs,
        "batch_size": sizes.stress_batch,
        "features": sizes.stress_features,
    }


def stress(context: Context) -> Comparison:
    """A model that only combines its inputs, trained with mse."""
    sizes = _sizes(context)
    x, y = _stress_data(sizes)
    candidates = []
    for key, label, model in _stress_models(sizes, with_alternatives=True):
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    with warnings.catch_warnings():
        # Expected: `Add` has nothing to train, so its step has no backward pass.
        warnings.filterwarnings("ignore", message=".*does not have any trainable")
        timing = context.time(candidates)
    details = {
        **_describe_stress(
            sizes,
            "stress",
            "training step (train_on_batch) of a model that only combines its "
            "inputs, mse loss; Add trains nothing, so it is a floor, not a target",
        ),
        **timing,
    }
    rows = [
        make_row(
            "stress",
            timing,
            "weighted_average",
            baseline,
            baseline_kind=kind,
            target=target,
        )
        for baseline, kind, target in (
            ("loop", "hand-written-ops", HAND_WRITTEN_TARGET),
            ("stack", "hand-written-ops", HAND_WRITTEN_TARGET),
            ("seed_formula", "seed-formula", SEED_FORMULA_TARGET),
            ("add", "keras-layers", None),
        )
    ]
    return Comparison(details, rows)


def stress_forward(context: Context) -> Comparison:
    """The stress models' inference step."""
    sizes = _sizes(context)
    x, _ = _stress_data(sizes)
    candidates = []
    for key, label, model in _stress_models(sizes, with_alternatives=False):
        candidates.append(
            Candidate(key, label, model, lambda model=model: model.predict_on_batch(x))
        )
    timing = context.time(candidates)
    details = {
        **_describe_stress(
            sizes,
            "stress forward",
            "inference step (predict_on_batch) of the stress models: Add has "
            "no weights, so its training step has no backward pass at all",
        ),
        **timing,
    }
    rows = [
        make_row(
            "stress forward",
            timing,
            "weighted_average",
            "add",
            baseline_kind="keras-layers",
            target=None,
        )
    ]
    return Comparison(details, rows)


def seed_scenario(context: Context) -> Comparison:
    """The question's model: parallel MLPs whose outputs are combined."""
    sizes = _sizes(context)
    rng = np.random.default_rng(1)
    x, y = seed_data(
        sizes.seed_batch,
        sizes.seed_features,
        sizes.seed_branches,
        sizes.seed_classes,
        rng,
    )
    candidates = []
    for key, label, combiner in (
        ("weighted_average", "WeightedAverage", WeightedAverage),
        ("add", "Add", keras.layers.Add),
    ):
        inputs = [
            keras.Input(shape=(sizes.seed_features,))
            for _ in range(sizes.seed_branches)
        ]
        branches = [
            keras.layers.Dense(sizes.seed_classes)(
                keras.layers.Dense(sizes.seed_hidden, activation="relu")(branch)
            )
            for branch in inputs
        ]
        model = keras.Model(inputs, combiner()(branches), name=key)
        model.compile(
            optimizer="adam",
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        )
        candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "seed scenario",
            timing,
            "weighted_average",
            "add",
            baseline_kind="keras-layers",
            target=SEED_TARGET,
        )
    ]
    details = {
        "name": "seed scenario",
        "description": (
            f"{sizes.seed_branches} parallel MLPs (Input({sizes.seed_features}) "
            f"-> Dense({sizes.seed_hidden}, relu) -> Dense({sizes.seed_classes})) "
            "combined, whole training step with adam and cross-entropy"
        ),
        "batch_size": sizes.seed_batch,
        **timing,
    }
    return Comparison(details, rows)


SCENARIOS = (stress, stress_forward, seed_scenario)
