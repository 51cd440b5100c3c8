"""N parallel branches: `ParallelDense` against N separate `Dense` stacks.

The seed's construction is N two-layer MLPs on one input, each a pair of
`Dense` layers, mixed by `WeightedAverage` over the list of their outputs.
The stacked form holds the same N MLPs in two `ParallelDense` layers (built
with `from_layers` from the separate model's layers, so both start from the
same weights) and mixes with `WeightedAverage(branch_axis=1)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keras_tether._cli.bench.scenarios import Comparison, Context
from keras_tether._cli.bench.scenarios._data import random, tensors
from keras_tether._cli.bench.schema import make_row
from keras_tether._cli.bench.timing import Candidate, train_step
from keras_tether.layers import ParallelDense, WeightedAverage


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the parallel-branch scenarios."""

    branches: tuple[int, ...]
    batch: int
    features: int
    hidden: int
    classes: int


# N=256 is left out of the full run: on 2 CPU cores the separate form's
# first fit alone takes minutes on JAX at that size.
FULL = Sizes(branches=(3, 16, 64), batch=512, features=64, hidden=64, classes=10)
QUICK = Sizes(branches=(2, 3, 4), batch=16, features=8, hidden=8, classes=4)


def _target(backend: str, branches: int) -> float:
    """Largest ratio stacked / separate (time per step) that meets the target."""
    if branches == 64:
        return 0.5
    if branches == 16 and backend == "torch":
        return 1 / 3
    return 1.0


def _models(sizes: Sizes, branches: int) -> tuple[keras.Model, keras.Model]:
    inputs = keras.Input(shape=(sizes.features,))
    hidden = [
        keras.layers.Dense(sizes.hidden, activation="relu") for _ in range(branches)
    ]
    heads = [keras.layers.Dense(sizes.classes) for _ in range(branches)]
    outputs = [head(layer(inputs)) for layer, head in zip(hidden, heads, strict=True)]
    separate = keras.Model(inputs, WeightedAverage()(outputs), name="separate")

    stacked_inputs = keras.Input(shape=(sizes.features,))
    first = ParallelDense.from_layers(hidden)
    second = ParallelDense.from_layers(heads, per_branch_inputs=True)
    mixed = WeightedAverage(branch_axis=1)(second(first(stacked_inputs)))
    stacked = keras.Model(stacked_inputs, mixed, name="stacked")
    return separate, stacked


def _data(sizes: Sizes) -> tuple[Any, Any]:
    rng = np.random.default_rng(2)
    x = random((sizes.batch, sizes.features), rng)
    labels = rng.integers(0, sizes.classes, size=sizes.batch)
    return tuple(tensors([x, np.eye(sizes.classes, dtype="float32")[labels]]))


def _predict_step(model: keras.Model, x: Any):
    return lambda: model.predict_on_batch(x)


def _first_step_seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _compare(context: Context, branches: int, training: bool) -> Comparison:
    sizes = QUICK if context.quick else FULL
    x, y = _data(sizes)
    separate, stacked = _models(sizes, branches)
    candidates = []
    first_step_s = {}
    for key, label, model in (
        ("stacked", "ParallelDense x2 + WeightedAverage(branch_axis=1)", stacked),
        ("separate", f"{branches} x (Dense, Dense) + WeightedAverage", separate),
    ):
        if training:
            model.compile(
                optimizer="adam",
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            )
            step = train_step(model, x, y)
        else:
            step = _predict_step(model, x)
        # The first step traces and compiles: the cost a user waits for
        # before training starts.
        first_step_s[key] = _first_step_seconds(step)
        candidates.append(Candidate(key, label, model, step))
    timing = context.time(candidates)
    name = f"parallel N={branches} {'training' if training else 'predict'}"
    details = {
        "name": name,
        "description": (
            f"{branches} two-layer MLPs ({sizes.features} -> {sizes.hidden}, "
            f"relu -> {sizes.classes}) on one input, mixed on the simplex: "
            "stacked in ParallelDense against separate Dense layers, "
            + (
                "training step (train_on_batch, adam, cross-entropy)"
                if training
                else "inference step (predict_on_batch)"
            )
        ),
        "branches": branches,
        "batch_size": sizes.batch,
        "first_step_s": first_step_s,
        **timing,
    }
    row = make_row(
        name,
        timing,
        "stacked",
        "separate",
        baseline_kind="keras-layers",
        target=_target(context.backend, branches) if training else 1.0,
    )
    return Comparison(details, [row])


def _scenario(branches_index: int, training: bool):
    """The comparison at the `branches_index`-th branch count of the sizes."""

    def scenario(context: Context) -> Comparison:
        sizes = QUICK if context.quick else FULL
        return _compare(context, sizes.branches[branches_index], training)

    kind = "train" if training else "predict"
    scenario.__name__ = f"parallel_{branches_index}_{kind}"
    return scenario


def _scenarios() -> tuple:
    assert len(FULL.branches) == len(QUICK.branches)
    return tuple(
        _scenario(index, training)
        for index in range(len(FULL.branches))
        for training in (True, False)
    )


SCENARIOS = _scenarios()
