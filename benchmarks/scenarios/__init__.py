"""The benchmark's scenarios, one module per family, and their registry.

A scenario module (say `routing.py`, beside `mixing.py` and `ties.py`):

- defines its problem sizes twice, for a full run and for `--smoke` (tiny
  and few distinct shapes: JAX compiles every eager operation once per
  shape), and picks them with `context.quick`;
- defines `SCENARIOS`, a tuple of functions, each taking a `Context` and
  returning a `Comparison`. A function builds every compared model,
  compiles it, wraps each in a `timing.Candidate` (most steps are
  `timing.train_step(model, x, y)`, on data converted to tensors once
  with `_data.tensors`),
  times them together with `context.time(candidates)`, and makes one row per
  reported ratio with `schema.make_row` (ours against one baseline, with the
  baseline's kind and the target ratio, or `None` where there is none);
- imports Keras and the library freely: it runs only inside a measuring
  process, never for `--help`.

It joins the benchmark with one line in `MODULES` below. The runner shows
each function's name as progress, clears the Keras session after it, adds
`backend` and `scenario` (the module name) to each row, and in quick mode
marks the rows indicative and judges no target; every row then follows
`schema.ROW_SCHEMA`, and `tests/test_bench.py` checks each against it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import timing

# The scenario modules of this package, run in this order.
MODULES = (
    "mixing",
    "ties",
    "parallel",
    "routing",
    "parametrize",
    "ensemble",
)


@dataclass(frozen=True)
class Context:
    """What a scenario function is given: the backend and the timing budget."""

    backend: str
    quick: bool
    budget: timing.Budget

    def time(self, candidates: list[timing.Candidate]) -> dict[str, Any]:
        """Times `candidates` together within this context's budget."""
        return timing.time_candidates(candidates, self.budget)


@dataclass
class Comparison:
    """One timed comparison: its details for the JSON, and its result rows.

    `details` holds at least `name` and `description`, the sizes compared,
    and the timing's `steps_per_round` and `models`.
    """

    details: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


# A scenario times one comparison, or a list of them (one per size).
Scenario = Callable[[Context], Comparison | list[Comparison]]


def load(names: Sequence[str] | None = None) -> list[tuple[str, Scenario]]:
    """The scenario functions of `names` (default: every module), in order."""
    found = []
    for name in MODULES:
        if names is not None and name not in names:
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        found.extend((name, scenario) for scenario in module.SCENARIOS)
    return found
