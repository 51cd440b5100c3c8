"""The timing budget and the measurement of compared models.

Nothing here imports Keras: the command line reads the budgets for its help.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """How long and how often each compared model is timed."""

    # Each model's steps in one round should take about this long.
    round_seconds: float
    max_steps_per_round: int
    rounds: int
    warmup: int


FULL_BUDGET = Budget(round_seconds=0.25, max_steps_per_round=100, rounds=21, warmup=5)

QUICK_BUDGET = Budget(round_seconds=0.005, max_steps_per_round=3, rounds=2, warmup=1)


@dataclass
class Candidate:
    """One compared model and how one of its steps is run."""

    key: str
    label: str
    model: Any
    step: Callable[[], Any]


def train_step(model: Any, x: Any, y: Any) -> Callable[[], Any]:
    """One training step of `model` on a fixed batch, as a step function."""
    return lambda: model.train_on_batch(x, y)


def time_candidates(candidates: Sequence[Candidate], budget: Budget) -> dict[str, Any]:
    """Warms up and times `candidates` in rotating order (see `bench`).

    Returns:
        A dict with `steps_per_round`, and under `models`, per candidate key,
        its `label`, `median_ms`, `round_ms` (the time per step in each
        round) and `jit_compile`.
    """
    warm_ms = {}
    for candidate in candidates:
        times = []
        for _ in range(budget.warmup):
            start = time.perf_counter()
            candidate.step()
            times.append(time.perf_counter() - start)
        # The first step compiles; the later ones show the steady state.
        steady = times[1:] or times
        warm_ms[candidate.key] = statistics.median(steady)
    slowest = max(warm_ms.values())
    # A step too fast for the clock to see must not divide by zero.
    per_round = round(budget.round_seconds / max(slowest, 1e-9))
    steps = max(1, min(budget.max_steps_per_round, per_round))
    round_ms: dict[str, list[float]] = {c.key: [] for c in candidates}
    # Everything alive now (the backend, the models) stays alive: frozen, it
    # is left out of the collections between timed blocks, which then take
    # milliseconds instead of most of a second.
    gc.collect()
    gc.freeze()
    try:
        for index in range(budget.rounds):
            shift = index % len(candidates)
            for candidate in [*candidates[shift:], *candidates[:shift]]:
                round_ms[candidate.key].append(_time_steps(candidate.step, steps))
    finally:
        gc.unfreeze()
    return {
        "steps_per_round": steps,
        "models": {
            c.key: {
                "label": c.label,
                "median_ms": statistics.median(round_ms[c.key]),
                "round_ms": round_ms[c.key],
                "jit_compile": _jit_compile(c.model),
            }
            for c in candidates
        },
    }


def _time_steps(step: Callable[[], Any], steps: int) -> float:
    # A garbage collection landing inside one model's steps would be charged
    # to that model alone, so collect before and keep the collector out.
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed / steps * 1000.0


def _jit_compile(model: Any) -> Any:
    value = getattr(model, "jit_compile", None)
    return value if isinstance(value, bool | str) or value is None else str(value)
