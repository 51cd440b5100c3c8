"""N parallel branches: `ParallelDense` against N separate `Dense` stacks.

The seed's construction is N two-layer MLPs on one input, each a pair of
`Dense` layers, mixed by `WeightedAverage` over the list of their outputs.
The stacked form holds the same N MLPs in two `ParallelDense` layers (built
with `from_layers` from the separate model's layers, so both start from the
same weights) and mixes with `WeightedAverage(branch_axis=1)`.

A second comparison times the first `train_on_batch` (trace and compile) of
the seed's list form mixed by `WeightedAverage` against the same branches
mixed by `keras.layers.Average`: the cost of the mixing layer to a user
waiting for training to start, at two branch counts so that its growth
with N shows.
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
from keras_tether._cli.bench.timing import Candidate, _jit_compile, train_step
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


# Branch counts of the first-fit comparison. JAX's first fit of the list
# form takes about 10 s per model at N=64 on 2 CPU cores and minutes at
# N=256, so the full run stops at 64; 16 and 64 show the growth.
FIRST_FIT_BRANCHES = {"full": (16, 64), "quick": (2, 3)}
# Each round builds and compiles both models afresh, so the full run times
# only a few rounds.
FIRST_FIT_ROUNDS = 3
# Target of the first-fit comparison: WeightedAverage within 3x of Average.
FIRST_FIT_TARGET = 3.0


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


def _list_model(sizes: Sizes, branches: int, mixer: keras.layers.Layer):
    inputs = keras.Input(shape=(sizes.features,))
    outputs = [
        keras.layers.Dense(sizes.classes)(
            keras.layers.Dense(sizes.hidden, activation="relu")(inputs)
        )
        for _ in range(branches)
    ]
    model = keras.Model(inputs, mixer(outputs))
    model.compile(
        optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    return model


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


def _first_fit(context: Context, branches: int) -> Comparison:
    sizes = QUICK if context.quick else FULL
    x, y = _data(sizes)
    rounds = (
        context.budget.rounds
        if context.quick
        else min(context.budget.rounds, FIRST_FIT_ROUNDS)
    )
    mixers = {
        "weighted": (f"WeightedAverage over {branches} inputs", WeightedAverage),
        "average": (f"keras Average over {branches} inputs", keras.layers.Average),
    }
    round_ms: dict[str, list[float]] = {key: [] for key in mixers}
    jit_compile = {}
    for index in range(rounds):
        # Alternate which model compiles first in a round.
        order = list(mixers) if index % 2 == 0 else list(reversed(mixers))
        for key in order:
            model = _list_model(sizes, branches, mixers[key][1]())
            jit_compile[key] = _jit_compile(model)
            seconds = _first_step_seconds(train_step(model, x, y))
            round_ms[key].append(seconds * 1000)
            del model
    timing = {
        "steps_per_round": 1,
        "models": {
            key: {
                "label": label,
                "median_ms": float(np.median(round_ms[key])),
                "round_ms": round_ms[key],
                "jit_compile": jit_compile[key],
            }
            for key, (label, _) in mixers.items()
        },
    }
    name = f"first fit N={branches}"
    details = {
        "name": name,
        "description": (
            f"first train_on_batch (trace and compile) of {branches} two-layer "
            f"MLPs ({sizes.features} -> {sizes.hidden}, relu -> {sizes.classes}) "
            "mixed over the list of their outputs by WeightedAverage against "
            "keras Average; each round builds both models afresh"
        ),
        "branches": branches,
        "batch_size": sizes.batch,
        **timing,
    }
    row = make_row(
        name,
        timing,
        "weighted",
        "average",
        baseline_kind="keras-layers",
        target=FIRST_FIT_TARGET,
    )
    return Comparison(details, [row])


def _first_fit_scenario(branches_index: int):
    """The first-fit comparison at the `branches_index`-th branch count."""

    def scenario(context: Context) -> Comparison:
        counts = FIRST_FIT_BRANCHES["quick" if context.quick else "full"]
        return _first_fit(context, counts[branches_index])

    scenario.__name__ = f"parallel_first_fit_{branches_index}"
    return scenario


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
    assert len(FIRST_FIT_BRANCHES["full"]) == len(FIRST_FIT_BRANCHES["quick"])
    return tuple(
        _scenario(index, training)
        for index in range(len(FULL.branches))
        for training in (True, False)
    ) + tuple(
        _first_fit_scenario(index) for index in range(len(FIRST_FIT_BRANCHES["full"]))
    )


SCENARIOS = _scenarios()
