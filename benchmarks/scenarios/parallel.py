"""N parallel branches: `ParallelDense` against N separate `Dense` stacks.

The seed's construction is N two-layer MLPs on one input, each a pair of
`Dense` layers, mixed by `WeightedAverage` over the list of their outputs.
The stacked form holds the same N MLPs in two `ParallelDense` layers (built
with `from_layers` from the separate model's layers, so both start from the
same weights) and mixes with `WeightedAverage(branch_axis=1)`.

Each training comparison also times a floor: one `Dense(N * hidden,
relu)` and one `Dense(classes)` on the same input. Its two matrix products
have the shapes of the stacked form's (the first the same, the second the
same number of multiply-adds as the per-branch product) with no branch
axis at all: no model with N branches trains faster than these two plain
products. It shows how far a ratio target is from what the machine allows.

A second comparison times the per-branch product alone (each branch's own
input times its own kernel), where stacking can only change how the
products are computed: one batched product against N separate ones, and
against the one `einsum` a user writes by hand over a stacked kernel.

A third comparison times the first `train_on_batch` (trace and compile) of
the seed's list form mixed by `WeightedAverage` against the same branches
mixed by `keras.layers.Average`, each in a fresh process: the cost of the
mixing layer to a user waiting for training to start, and the peak memory
it takes, at several branch counts so that their growth with N shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios import _first_fit as _first_fit_process
from benchmarks.scenarios._data import random, tensors
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether.layers import ParallelDense, WeightedAverage


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the parallel-branch scenarios."""

    branches: tuple[int, ...]
    batch: int
    features: int
    hidden: int
    classes: int


FULL = Sizes(branches=(3, 16, 64, 256), batch=512, features=64, hidden=64, classes=10)
QUICK = Sizes(branches=(2, 3, 4, 5), batch=16, features=8, hidden=8, classes=4)


# Branch counts of the first-fit comparison: its growth with N, up to 256
# (about half a minute per model on JAX on 2 CPU cores). TensorFlow traces
# a list model of 64 branches for minutes, mixed by Average as by
# WeightedAverage, and one of 256 would take most of an hour per model, so
# its full run stops at 64.
FIRST_FIT_BRANCHES = {
    "full": (16, 64, 256),
    "tensorflow": (16, 32, 64),
    "quick": (2, 3, 4),
}
# Each round compiles both models afresh in new processes, so the full run
# times only a few rounds.
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


def _floor_model(sizes: Sizes, branches: int) -> keras.Model:
    inputs = keras.Input(shape=(sizes.features,))
    hidden = keras.layers.Dense(branches * sizes.hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(sizes.classes)(hidden), name="floor")


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
    compared = [
        ("stacked", "ParallelDense x2 + WeightedAverage(branch_axis=1)", stacked),
        ("separate", f"{branches} x (Dense, Dense) + WeightedAverage", separate),
    ]
    if training:
        compared.append(
            (
                "floor",
                f"Dense({branches * sizes.hidden}, relu) + Dense({sizes.classes}), "
                "the same products unstacked",
                _floor_model(sizes, branches),
            )
        )
    candidates = []
    first_step_s = {}
    for key, label, model in compared:
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
    rows = [
        make_row(
            name,
            timing,
            "stacked",
            "separate",
            baseline_kind="keras-layers",
            target=_target(context.backend, branches) if training else 1.0,
        )
    ]
    if training:
        rows.append(
            make_row(
                name,
                timing,
                "stacked",
                "floor",
                baseline_kind="matrix-floor",
                target=None,
            )
        )
    return Comparison(details, rows)


class _EinsumProduct(keras.layers.Layer):
    """Each branch's slice times its own kernel, as one hand-written einsum."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        branches, features = input_shape[1], input_shape[2]
        self.kernel = self.add_weight(
            shape=(branches, features, self.units), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(shape=(branches, self.units), initializer="zeros")

    def call(self, inputs):
        return keras.ops.einsum("bni,nio->bno", inputs, self.kernel) + self.bias


def per_branch_product(context: Context) -> Comparison:
    """The per-branch product alone: one batched product against N products.

    Each of N branches multiplies its own input by its own kernel, once as
    one `ParallelDense(per_branch_inputs=True)` on a `(batch, N, features)`
    input and once as N `Dense` layers on N inputs, and the branches are
    summed. No shared input, no mixing: this is the floor of what stacking
    changes in the step, a batched matrix product (and its layout changes)
    against as many separate ones. A third model computes the products as
    the batch-major `einsum("bni,nio->bno")` a user writes over a stacked
    kernel, the layout `ParallelDense` chose against.
    """
    sizes = QUICK if context.quick else FULL
    branches = sizes.branches[-2]
    rng = np.random.default_rng(3)
    x = random((sizes.batch, branches, sizes.features), rng)
    y = random((sizes.batch, sizes.hidden), rng)
    inputs = keras.Input(shape=(branches, sizes.features))
    parallel = ParallelDense(sizes.hidden, branches, per_branch_inputs=True)
    stacked = keras.Model(inputs, keras.ops.sum(parallel(inputs), axis=1))
    einsum_inputs = keras.Input(shape=(branches, sizes.features))
    by_hand = _EinsumProduct(sizes.hidden)
    einsum = keras.Model(einsum_inputs, keras.ops.sum(by_hand(einsum_inputs), axis=1))
    by_hand.set_weights(parallel.get_weights())
    separate_inputs = [keras.Input(shape=(sizes.features,)) for _ in range(branches)]
    separate = keras.Model(
        separate_inputs,
        keras.layers.Add()(
            [keras.layers.Dense(sizes.hidden)(i) for i in separate_inputs]
        ),
    )
    stacked_data = tensors([x, y])
    separate_data = tensors([np.ascontiguousarray(x[:, n]) for n in range(branches)])
    (separate_y,) = tensors([y])
    candidates = []
    for key, label, model, data, target in (
        (
            "stacked",
            "ParallelDense(per_branch_inputs=True)",
            stacked,
            stacked_data[0],
            stacked_data[1],
        ),
        (
            "separate",
            f"{branches} x Dense on {branches} inputs",
            separate,
            separate_data,
            separate_y,
        ),
        (
            "einsum",
            'keras.ops.einsum("bni,nio->bno") by hand',
            einsum,
            stacked_data[0],
            stacked_data[1],
        ),
    ):
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, train_step(model, data, target)))
    timing = context.time(candidates)
    name = f"per-branch product N={branches} training"
    details = {
        "name": name,
        "description": (
            f"{branches} branches, each its own input ({sizes.features} features) "
            f"times its own kernel (-> {sizes.hidden}), summed: one ParallelDense "
            "with per_branch_inputs against separate Dense layers on separate "
            "inputs, training step (train_on_batch, adam, mse)"
        ),
        "branches": branches,
        "batch_size": sizes.batch,
        **timing,
    }
    rows = [
        make_row(name, timing, "stacked", baseline, baseline_kind=kind, target=None)
        for baseline, kind in (
            ("separate", "keras-layers"),
            ("einsum", "hand-written-ops"),
        )
    ]
    return Comparison(details, rows)


def _first_fit(context: Context, branches: int) -> Comparison:
    sizes = QUICK if context.quick else FULL
    # Each round starts two processes: one round suffices to check the
    # quick run, which must stay fast.
    rounds = 1 if context.quick else min(context.budget.rounds, FIRST_FIT_ROUNDS)
    mixers = {
        "weighted": f"WeightedAverage over {branches} inputs",
        "average": f"keras Average over {branches} inputs",
    }
    round_ms: dict[str, list[float]] = {key: [] for key in mixers}
    peak_mb: dict[str, list[float]] = {key: [] for key in mixers}
    jit_compile = {}
    for index in range(rounds):
        # Alternate which model compiles first in a round.
        order = list(mixers) if index % 2 == 0 else list(reversed(mixers))
        for key in order:
            # A fresh process each time: nothing compiled before helps.
            result = _first_fit_process.measure(
                context.backend, branches, key, context.quick
            )
            round_ms[key].append(result["seconds"] * 1000)
            peak_mb[key].append(result["peak_mb"])
            jit_compile[key] = result["jit_compile"]
    timing = {
        "steps_per_round": 1,
        "models": {
            key: {
                "label": label,
                "median_ms": float(np.median(round_ms[key])),
                "round_ms": round_ms[key],
                "jit_compile": jit_compile[key],
                "peak_mb": float(np.median(peak_mb[key])),
                "round_peak_mb": peak_mb[key],
            }
            for key, label in mixers.items()
        },
    }
    name = f"first fit N={branches}"
    details = {
        "name": name,
        "description": (
            f"first train_on_batch (trace and compile) of {branches} two-layer "
            f"MLPs ({sizes.features} -> {sizes.hidden}, relu -> {sizes.classes}) "
            "mixed over the list of their outputs by WeightedAverage against "
            "keras Average, each in a fresh process; peak_mb is the rise of "
            "the process's peak resident memory during that first step"
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
        if context.quick:
            counts = FIRST_FIT_BRANCHES["quick"]
        else:
            counts = FIRST_FIT_BRANCHES.get(context.backend, FIRST_FIT_BRANCHES["full"])
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
    assert len({len(counts) for counts in FIRST_FIT_BRANCHES.values()}) == 1
    return tuple(
        _scenario(index, training)
        for index in range(len(FULL.branches))
        for training in (True, False)
    ) + (
        per_branch_product,
        *(
            _first_fit_scenario(index)
            for index in range(len(FIRST_FIT_BRANCHES["full"]))
        ),
    )


SCENARIOS = _scenarios()
