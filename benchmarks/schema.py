"""The one JSON schema of a benchmark result row, shared by every scenario.

A row compares one keras-tether model ("ours") with one model a user could
otherwise write ("the baseline"), on one backend. Every scenario builds its
rows with `make_row`; the runner adds `backend` and `scenario`, and in quick
mode marks the row `indicative` and judges no target (`met` is null). The JSON that
`python -m benchmarks --out` writes holds the rows under `rows`, and
`ROW_SCHEMA` is a JSON Schema (draft 2020-12) that each of them satisfies.
"""

from __future__ import annotations

import statistics
from typing import Any

# What the baseline of a row is, as a user would meet it.
BASELINE_KINDS = {
    "keras-layers": "the same model built from plain Keras layers",
    "hand-written-ops": "the best form a user writes by hand with keras.ops",
    "seed-formula": "the formula the question started from",
    "every-expert": "the same mixture of experts computing every expert on "
    "every token, as keras-hub's MoE blocks do",
    "fixed-mixture": "the same model mixed by one WeightedAverage for all examples",
    "other-option": "the same keras-tether model with another option of its own "
    "(another map, no cache)",
    "matrix-floor": "the same matrix products as plain full-width Dense layers "
    "with no branch structure: not the same model, a floor on the step time",
    "batch-floor": "one copy of the model on N times the batch: the same work "
    "with no branch structure, a floor on the step time",
}

_NUMBER = {"type": "number", "exclusiveMinimum": 0}

ROW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "keras-tether benchmark row",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "backend",
        "scenario",
        "benchmark",
        "ours",
        "baseline",
        "baseline_kind",
        "ours_ms",
        "baseline_ms",
        "ratio",
        "round_ratios",
        "target",
        "met",
        "indicative",
    ],
    "properties": {
        "backend": {"enum": ["tensorflow", "jax", "torch"]},
        "scenario": {
            "type": "string",
            "description": "the scenario module that measured the row",
        },
        "benchmark": {"type": "string", "description": "the comparison's name"},
        "ours": {"type": "string", "description": "the keras-tether model"},
        "baseline": {"type": "string", "description": "the model compared with"},
        "baseline_kind": {"enum": sorted(BASELINE_KINDS)},
        "ours_ms": {**_NUMBER, "description": "median milliseconds per step"},
        "baseline_ms": {**_NUMBER, "description": "median milliseconds per step"},
        "ratio": {
            **_NUMBER,
            "description": "median over rounds of ours / baseline",
        },
        "round_ratios": {"type": "array", "items": _NUMBER, "minItems": 1},
        "target": {
            "type": ["number", "null"],
            "description": "largest ratio that meets the target, or null",
        },
        "met": {
            "type": ["boolean", "null"],
            "description": (
                "whether the ratio meets the target; null without a target "
                "and in quick mode"
            ),
        },
        "indicative": {
            "type": "boolean",
            "description": (
                "true in quick mode: tiny models and few rounds, so the ratio "
                "only shows that everything runs, and no target is judged"
            ),
        },
    },
}


def make_row(
    benchmark: str,
    timing: dict[str, Any],
    ours: str,
    baseline: str,
    *,
    baseline_kind: str,
    target: float | None,
) -> dict[str, Any]:
    """Builds a row (without `backend` and `scenario`) from a timing.

    Args:
        benchmark: String, the comparison's name.
        timing: The dict `timing.time_candidates` returned.
        ours: String, the key of the keras-tether candidate in `timing`.
        baseline: String, the key of the candidate it is compared with.
        baseline_kind: String, one of `BASELINE_KINDS`.
        target: Optional float, the largest ratio that meets the target.
    """
    if baseline_kind not in BASELINE_KINDS:
        raise ValueError(
            "Received an invalid value for `baseline_kind`, expected one of "
            f"{sorted(BASELINE_KINDS)}. Received: baseline_kind={baseline_kind!r}"
        )
    models = timing["models"]
    round_ratios = [
        mine / theirs
        for mine, theirs in zip(
            models[ours]["round_ms"], models[baseline]["round_ms"], strict=True
        )
    ]
    ratio = statistics.median(round_ratios)
    return {
        "benchmark": benchmark,
        "ours": models[ours]["label"],
        "baseline": models[baseline]["label"],
        "baseline_kind": baseline_kind,
        "ours_ms": models[ours]["median_ms"],
        "baseline_ms": models[baseline]["median_ms"],
        "ratio": ratio,
        "round_ratios": round_ratios,
        "target": target,
        "met": None if target is None else bool(ratio <= target),
        "indicative": False,
    }
