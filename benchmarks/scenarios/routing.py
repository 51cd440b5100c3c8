"""Routing scenarios: sparse against dense dispatch, gated against one mixture."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios._data import random, seed_data, tensors
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether.layers import GatedAverage, MixtureOfExperts, WeightedAverage

# Largest ratio sparse / dense at 16 experts that meets the target (2x faster).
SPARSE_TARGET = 0.5
TARGET_EXPERTS = 16


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the routing scenarios."""

    experts: tuple[int, ...]
    top_k: int
    capacity_factor: float
    batch: int
    tokens: int
    features: int
    hidden: int
    seed_branches: int
    seed_batch: int
    seed_features: int
    seed_hidden: int
    seed_classes: int


FULL = Sizes(
    experts=(8, 16, 32),
    top_k=2,
    capacity_factor=1.25,
    batch=16,
    tokens=64,
    features=64,
    hidden=256,
    seed_branches=3,
    seed_batch=1000,
    seed_features=100,
    seed_hidden=32,
    seed_classes=10,
)

QUICK = Sizes(
    experts=(16,),
    top_k=2,
    capacity_factor=1.25,
    batch=2,
    tokens=8,
    features=8,
    hidden=8,
    seed_branches=3,
    seed_batch=16,
    seed_features=8,
    seed_hidden=8,
    seed_classes=8,
)


def _sizes(context: Context) -> Sizes:
    return QUICK if context.quick else FULL


def _expert_flops(sizes: Sizes, experts: int, dispatch: str) -> int:
    """Forward multiply-adds x 2 of the experts and of the dispatch einsums."""
    per_token = 2 * 2 * sizes.features * sizes.hidden  # two projections
    groups = sizes.batch
    if dispatch == "dense":
        return groups * sizes.tokens * experts * per_token
    share = sizes.capacity_factor * sizes.tokens * sizes.top_k / experts
    capacity = min(sizes.tokens, max(1, math.ceil(share)))
    slots = groups * experts * capacity
    # Dispatch and combine: (tokens, experts, capacity) x features, twice.
    moves = 2 * 2 * groups * sizes.tokens * experts * capacity * sizes.features
    return slots * per_token + moves


def mixture_of_experts(context: Context) -> Comparison:
    """A token model with one mixture-of-experts layer, sparse vs dense dispatch."""
    sizes = _sizes(context)
    rng = np.random.default_rng(2)
    shape = (sizes.batch, sizes.tokens, sizes.features)
    x, y = tensors([random(shape, rng), random(shape, rng)])
    candidates = []
    for experts in sizes.experts:
        for dispatch in ("sparse", "dense"):
            tokens = keras.Input(shape=shape[1:])
            moe = MixtureOfExperts(
                experts=experts,
                hidden_units=sizes.hidden,
                top_k=sizes.top_k,
                capacity_factor=sizes.capacity_factor,
                dispatch=dispatch,
                residual=True,
            )
            model = keras.Model(tokens, moe(tokens), name=f"{dispatch}_{experts}")
            model.compile(optimizer="adam", loss="mse")
            key = f"{dispatch}_{experts}"
            label = f"MixtureOfExperts E={experts} {dispatch}"
            candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "mixture of experts",
            timing,
            f"sparse_{experts}",
            f"dense_{experts}",
            baseline_kind="every-expert",
            target=SPARSE_TARGET if experts == TARGET_EXPERTS else None,
        )
        for experts in sizes.experts
    ]
    details: dict[str, Any] = {
        "name": "mixture of experts",
        "description": (
            "training step (adam, mse) of Input(tokens, features) -> "
            f"MixtureOfExperts(top_k={sizes.top_k}, capacity_factor="
            f"{sizes.capacity_factor}, residual=True), sparse against dense "
            "dispatch; flops are the forward experts' and dispatch einsums'"
        ),
        "batch_size": sizes.batch,
        "tokens": sizes.tokens,
        "features": sizes.features,
        "hidden_units": sizes.hidden,
        "forward_flops": {
            f"{dispatch}_{experts}": _expert_flops(sizes, experts, dispatch)
            for experts in sizes.experts
            for dispatch in ("sparse", "dense")
        },
        **timing,
    }
    return Comparison(details, rows)


def gated_seed(context: Context) -> Comparison:
    """The seed's parallel MLPs mixed per example against one mixture."""
    sizes = _sizes(context)
    rng = np.random.default_rng(3)
    x, y = seed_data(
        sizes.seed_batch,
        sizes.seed_features,
        sizes.seed_branches,
        sizes.seed_classes,
        rng,
    )
    candidates = []
    for key, label in (
        ("gated_average", "GatedAverage"),
        ("weighted_average", "WeightedAverage"),
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
        if key == "gated_average":
            mixed = GatedAverage()([inputs[0], branches])
        else:
            mixed = WeightedAverage()(branches)
        model = keras.Model(inputs, mixed, name=key)
        model.compile(
            optimizer="adam",
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        )
        candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "gated seed scenario",
            timing,
            "gated_average",
            "weighted_average",
            baseline_kind="fixed-mixture",
            target=None,
        )
    ]
    details = {
        "name": "gated seed scenario",
        "description": (
            f"{sizes.seed_branches} parallel MLPs (Input({sizes.seed_features}) "
            f"-> Dense({sizes.seed_hidden}, relu) -> Dense({sizes.seed_classes})) "
            "mixed per example by GatedAverage (routed from the first input) "
            "or by one WeightedAverage; training step, adam, cross-entropy"
        ),
        "batch_size": sizes.seed_batch,
        **timing,
    }
    return Comparison(details, rows)


SCENARIOS = (mixture_of_experts, gated_seed)
