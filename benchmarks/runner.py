"""Runs the scenarios: on the backend Keras is using, or on each in turn."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import _args, child_environment, report, timing

# Environment variables that set the thread pools of the backends. They are
# recorded, not set: the benchmark runs with each backend's defaults.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
)

# Distributions whose versions are recorded, by backend.
BACKEND_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}

PROG = "make bench"

# A measuring process's lines of progress on stderr start with this; the
# command passes them on and keeps the rest for a message if it fails.
PROGRESS_PREFIX = f"{PROG}: "


def budget(
    quick: bool, rounds: int | None = None, warmup: int | None = None
) -> timing.Budget:
    """The timing budget of a full or quick run, with the given overrides."""
    chosen = timing.QUICK_BUDGET if quick else timing.FULL_BUDGET
    if rounds is not None:
        chosen = dataclasses.replace(chosen, rounds=rounds)
    if warmup is not None:
        chosen = dataclasses.replace(chosen, warmup=warmup)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Measures the backend Keras is using; `python -m benchmarks.backend`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backend",
        description=(
            "Measure keras-tether's step times against plain Keras on the "
            "backend Keras is using (set KERAS_BACKEND to choose it). "
            "`python -m benchmarks` runs this once per backend."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=_args.BACKENDS,
        help="the backend to expect; it must be the one Keras is using",
    )
    _args.add_timing_arguments(parser)
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    import keras

    active = keras.backend.backend()
    if args.backend is not None and args.backend != active:
        print(
            f"keras-tether: asked to benchmark {args.backend}, but Keras is using "
            f"{active}; set KERAS_BACKEND={args.backend} before starting Python.",
            file=sys.stderr,
        )
        return 2
    result = run_backend(
        quick=args.quick,
        rounds=args.rounds,
        warmup=args.warmup,
        scenario_names=args.scenarios,
    )
    if args.out:
        _write_json(args.out, result)
    if args.quick:
        print(report.QUICK_NOTE)
    print(report.format_table(result["rows"]))
    return 0


def run_backend(
    quick: bool = False,
    rounds: int | None = None,
    warmup: int | None = None,
    scenario_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Runs every scenario on the backend Keras is using.

    Args:
        quick: Boolean, whether to use the scenarios' tiny sizes and the
            quick budget.
        rounds: Positive integer, timed rounds per comparison; defaults to
            the budget's own.
        warmup: Positive integer, untimed steps per model; defaults to the
            budget's own.

    Returns:
        A JSON-serializable dict: `backend`, `environment`, `settings`,
        `comparisons` (the details of each) and `rows` (one per reported
        ratio, following `schema.ROW_SCHEMA`).
    """
    import keras

    from benchmarks import scenarios

    chosen = budget(quick, rounds, warmup)
    backend = keras.backend.backend()
    context = scenarios.Context(backend=backend, quick=quick, budget=chosen)
    comparisons = []
    rows = []
    loaded = scenarios.load(scenario_names)
    for number, (module, scenario) in enumerate(loaded, start=1):
        name = scenario.__name__.replace("_", " ")
        note(f"{PROGRESS_PREFIX}{backend}: {number}/{len(loaded)} {module}: {name}")
        result = scenario(context)
        # A scenario times one comparison, or one per size it covers.
        for comparison in result if isinstance(result, list) else [result]:
            comparisons.append(comparison.details)
            for row in comparison.rows:
                row = {"backend": backend, "scenario": module, **row}
                if quick:
                    row.update(met=None, indicative=True)
                rows.append(row)
        keras.backend.clear_session()
    return {
        "backend": backend,
        "environment": environment(),
        "settings": {
            "quick": quick,
            "scenarios": list(scenario_names or scenarios.MODULES),
            "rounds": chosen.rounds,
            "warmup": chosen.warmup,
            "round_seconds": chosen.round_seconds,
            "max_steps_per_round": chosen.max_steps_per_round,
            "threads": "backend defaults (see environment.thread_variables)",
        },
        "comparisons": comparisons,
        "rows": rows,
    }


def environment() -> dict[str, Any]:
    """The versions and machine facts that a timing depends on."""
    versions = {}
    for name in ("keras", "numpy"):
        versions[name] = importlib.metadata.version(name)
    for names in BACKEND_DISTRIBUTIONS.values():
        for name in names:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(affinity(0)) if affinity else os.cpu_count(),
        "versions": versions,
        "thread_variables": {
            name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ
        },
    }


def run_all(
    backends: Sequence[str],
    quick: bool = False,
    rounds: int | None = None,
    warmup: int | None = None,
    out: str | None = None,
    scenario_names: Sequence[str] | None = None,
) -> int:
    """Benchmarks each backend in its own subprocess and prints one table.

    Args:
        backends: Names of the backends to measure, in order.
        quick: Boolean, whether to run the tiny `--smoke` benchmark.
        rounds: Optional positive integer, timed rounds per comparison.
        warmup: Optional positive integer, untimed steps per model.
        out: Optional path of the combined JSON file; its folder is created.
        scenario_names: Optional names of the scenario modules to run;
            defaults to all of them.

    Returns:
        The exit code: 0 when every backend ran, 1 when one failed.
    """
    results = {}
    failures = {}
    for backend in backends:
        print(f"{PROG}: measuring {backend} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result, failure = _run_subprocess(
            backend, quick, rounds, warmup, scenario_names
        )
        elapsed = time.perf_counter() - start
        if failure is None:
            results[backend] = result
            print(
                f"{PROG}: {backend} done in {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        else:
            failures[backend] = failure
            print(f"{PROG}: {backend} failed: {failure}", file=sys.stderr, flush=True)
    rows = [row for result in results.values() for row in result["rows"]]
    chosen = budget(quick, rounds, warmup)
    combined = {
        "environment": environment(),
        "settings": {
            "backends": list(backends),
            "quick": quick,
            "scenarios": list(scenario_names) if scenario_names else "all",
            "rounds": chosen.rounds,
            "warmup": chosen.warmup,
        },
        "results": results,
        "rows": rows,
        "failures": failures,
    }
    if rows:
        if quick:
            print(report.QUICK_NOTE)
        print(report.format_table(rows))
        print()
        for line in report.notes(results):
            print(line)
    if out:
        _write_json(out, combined)
        written = [out, *report.write_report(combined, os.path.dirname(out) or ".")]
        print("\nwrote " + ", ".join(written))
    return 1 if failures else 0


def _run_subprocess(
    backend: str,
    quick: bool,
    rounds: int | None,
    warmup: int | None,
    scenario_names: Sequence[str] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="keras-tether-bench-") as folder:
        path = os.path.join(folder, f"{backend}.json")
        command = [
            sys.executable,
            "-m",
            "benchmarks.backend",
            "--backend",
            backend,
            "--out",
            path,
        ]
        if quick:
            command.append("--smoke")
        if rounds is not None:
            command += ["--rounds", str(rounds)]
        if warmup is not None:
            command += ["--warmup", str(warmup)]
        if scenario_names:
            command += ["--scenarios", ",".join(scenario_names)]
        process = subprocess.Popen(
            command,
            env=child_environment(backend),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        last = "no message"
        for line in process.stderr:
            if line.startswith(PROGRESS_PREFIX):
                note(line.rstrip())
            elif line.strip():
                last = line.strip()
        code = process.wait()
        if code != 0:
            return None, f"exit code {code}: {last}"
        with open(path) as file:
            return json.load(file), None


def note(message: str) -> None:
    """Prints one line of progress to stderr, so stdout holds only results."""
    print(message, file=sys.stderr, flush=True)


def _write_json(path: str, data: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
