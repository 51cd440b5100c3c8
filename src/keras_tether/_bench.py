"""`keras-tether bench`: what mixing and tying cost per training step.

Every comparison builds all of its models first, compiles and warms up each
(the first steps trace and compile on JAX and TensorFlow), then runs rounds:
in each round every model runs the same number of steps back to back, the
order rotating from round to round, and its time per step is recorded. The
report gives each model's median step time and the median over rounds of the
per-round ratio ours / baseline, which cancels the slow drifts of a shared
machine that would bias a ratio of medians.

`keras-tether bench` runs each backend in its own subprocess. One backend,
the one Keras is using, can be measured directly:

    KERAS_BACKEND=jax python -m keras_tether._bench --out jax.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether import ties
from keras_tether.layers import WeightedAverage

BACKENDS = ("tensorflow", "jax", "torch")

# Largest ratio ours / baseline that meets the target; per backend for the
# stress test, where the combination is all the work there is.
STRESS_TARGETS = {"jax": 1.10, "tensorflow": 1.25, "torch": 1.25}
SEED_TARGET = 1.05
AUTOENCODER_TARGET = 1.05

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


@dataclass(frozen=True)
class Sizes:
    """The problem sizes and the timing budget of one benchmark run."""

    stress_inputs: int
    stress_batch: int
    stress_features: int
    seed_branches: int
    seed_batch: int
    seed_features: int
    seed_hidden: int
    seed_classes: int
    autoencoder_input: int
    autoencoder_units: tuple[int, ...]
    autoencoder_batch: int
    # Each model's steps in one round should take about this long.
    round_seconds: float
    max_steps_per_round: int
    rounds: int
    warmup: int


FULL = Sizes(
    stress_inputs=8,
    stress_batch=2048,
    stress_features=512,
    seed_branches=3,
    seed_batch=1000,
    seed_features=100,
    seed_hidden=32,
    seed_classes=10,
    autoencoder_input=784,
    autoencoder_units=(256, 64),
    autoencoder_batch=1024,
    round_seconds=0.25,
    max_steps_per_round=100,
    rounds=21,
    warmup=5,
)

# Few distinct shapes: JAX compiles every eager operation once per shape.
QUICK = Sizes(
    stress_inputs=8,
    stress_batch=16,
    stress_features=8,
    seed_branches=3,
    seed_batch=16,
    seed_features=8,
    seed_hidden=8,
    seed_classes=8,
    autoencoder_input=8,
    autoencoder_units=(8, 4),
    autoencoder_batch=16,
    round_seconds=0.005,
    max_steps_per_round=3,
    rounds=2,
    warmup=1,
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


@dataclass
class Candidate:
    """One compared model and how one of its steps is run."""

    key: str
    label: str
    model: keras.Model
    step: Callable[[], Any]


def main(argv: Sequence[str] | None = None) -> int:
    """Measures the backend Keras is using; the entry point of `python -m`."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_tether._bench",
        description=(
            "Measure keras-tether's step times against plain Keras on the "
            "backend Keras is using (set KERAS_BACKEND to choose it). "
            "`keras-tether bench` runs this once per backend."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the backend to expect; it must be the one Keras is using",
    )
    add_timing_arguments(parser)
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    active = keras.backend.backend()
    if args.backend is not None and args.backend != active:
        print(
            f"keras-tether: asked to benchmark {args.backend}, but Keras is using "
            f"{active}; set KERAS_BACKEND={args.backend} before starting Python.",
            file=sys.stderr,
        )
        return 2
    result = run_backend(quick=args.quick, rounds=args.rounds, warmup=args.warmup)
    if args.out:
        _write_json(args.out, result)
    print(format_table(result["rows"]))
    return 0


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--rounds`, `--warmup` and `--quick`, shared with the CLI."""
    parser.add_argument(
        "--rounds",
        type=positive_int,
        metavar="N",
        help=(
            f"timed rounds per comparison (default {FULL.rounds}, "
            f"or {QUICK.rounds} with --quick)"
        ),
    )
    parser.add_argument(
        "--warmup",
        type=positive_int,
        metavar="N",
        help=(
            "untimed steps per model before timing, which include compilation "
            f"(default {FULL.warmup}, or {QUICK.warmup} with --quick)"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models and few rounds: checks that everything runs, in seconds",
    )


def positive_int(text: str) -> int:
    """Parses a positive integer command-line argument."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run_backend(
    quick: bool = False, rounds: int | None = None, warmup: int | None = None
) -> dict[str, Any]:
    """Runs every comparison on the backend Keras is using.

    Args:
        quick: Boolean, whether to use the tiny sizes of `QUICK`.
        rounds: Positive integer, timed rounds per comparison; defaults to
            the sizes' own.
        warmup: Positive integer, untimed steps per model; defaults to the
            sizes' own.

    Returns:
        A JSON-serializable dict: `backend`, `environment`, `settings`,
        `comparisons` (the details of each) and `rows` (one per reported
        ratio, as printed by `format_table`).
    """
    sizes = QUICK if quick else FULL
    rounds = sizes.rounds if rounds is None else rounds
    warmup = sizes.warmup if warmup is None else warmup
    backend = keras.backend.backend()
    comparisons = []
    rows = []
    for build in (_stress, _stress_forward, _seed_scenario, _tied_autoencoder):
        comparison, comparison_rows = build(sizes, backend, rounds, warmup)
        comparisons.append(comparison)
        rows.extend(comparison_rows)
        keras.backend.clear_session()
    return {
        "backend": backend,
        "environment": environment(),
        "settings": {
            "quick": quick,
            "rounds": rounds,
            "warmup": warmup,
            "round_seconds": sizes.round_seconds,
            "max_steps_per_round": sizes.max_steps_per_round,
            "threads": "backend defaults (see environment.thread_variables)",
        },
        "comparisons": comparisons,
        "rows": [{"backend": backend, **row} for row in rows],
    }


def time_candidates(
    candidates: Sequence[Candidate], sizes: Sizes, rounds: int, warmup: int
) -> dict[str, Any]:
    """Warms up and times `candidates` in rotating order (see module doc).

    Returns:
        A dict with `steps_per_round`, and per candidate key its `median_ms`
        and its `round_ms`, the time per step in each round.
    """
    warm_ms = {}
    for candidate in candidates:
        times = []
        for _ in range(warmup):
            start = time.perf_counter()
            candidate.step()
            times.append(time.perf_counter() - start)
        # The first step compiles; the later ones show the steady state.
        steady = times[1:] or times
        warm_ms[candidate.key] = statistics.median(steady)
    slowest = max(warm_ms.values())
    # A step too fast for the clock to see must not divide by zero.
    per_round = round(sizes.round_seconds / max(slowest, 1e-9))
    steps = max(1, min(sizes.max_steps_per_round, per_round))
    round_ms: dict[str, list[float]] = {c.key: [] for c in candidates}
    # Everything alive now (the backend, the models) stays alive: frozen, it
    # is left out of the collections between timed blocks, which then take
    # milliseconds instead of most of a second.
    gc.collect()
    gc.freeze()
    try:
        for index in range(rounds):
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


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Renders result rows as an aligned text table."""
    header = (
        "backend",
        "benchmark",
        "ours (ms/step)",
        "baseline (ms/step)",
        "ratio",
        "target",
        "met",
    )
    lines = [header]
    for row in rows:
        target = row["target"]
        lines.append(
            (
                row["backend"],
                f"{row['benchmark']}: {row['ours']} vs {row['baseline']}",
                f"{row['ours_ms']:.3f}",
                f"{row['baseline_ms']:.3f}",
                f"{row['ratio']:.3f}",
                "-" if target is None else f"<= {target:.2f}",
                "-" if row["met"] is None else ("yes" if row["met"] else "NO"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4}
    text = []
    for number, line in enumerate(lines):
        cells = [
            cell.rjust(width) if i in numeric and number else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        text.append(" | ".join(cells).rstrip())
        if number == 0:
            text.append("-+-".join("-" * width for width in widths))
    return "\n".join(text)


def environment() -> dict[str, Any]:
    """The versions and machine facts that a timing depends on."""
    versions = {"keras": keras.__version__, "numpy": np.__version__}
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
) -> int:
    """Benchmarks each backend in its own subprocess and prints one table.

    Args:
        backends: Names of the backends to measure, in order.
        quick: Boolean, whether to run the tiny `--quick` benchmark.
        rounds: Optional positive integer, timed rounds per comparison.
        warmup: Optional positive integer, untimed steps per model.
        out: Optional path of the combined JSON file; its folder is created.

    Returns:
        The exit code: 0 when every backend ran, 1 when one failed.
    """
    results = {}
    failures = {}
    for backend in backends:
        print(
            f"keras-tether bench: measuring {backend} ...", file=sys.stderr, flush=True
        )
        start = time.perf_counter()
        result, failure = _run_subprocess(backend, quick, rounds, warmup)
        elapsed = time.perf_counter() - start
        if failure is None:
            results[backend] = result
            print(
                f"keras-tether bench: {backend} done in {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        else:
            failures[backend] = failure
            print(
                f"keras-tether bench: {backend} failed: {failure}",
                file=sys.stderr,
                flush=True,
            )
    rows = [row for result in results.values() for row in result["rows"]]
    combined = {
        "environment": environment(),
        "settings": {
            "backends": list(backends),
            "quick": quick,
            "rounds": rounds if rounds is not None else _sizes(quick).rounds,
            "warmup": warmup if warmup is not None else _sizes(quick).warmup,
        },
        "results": results,
        "rows": rows,
        "failures": failures,
    }
    if rows:
        print(format_table(rows))
        print()
        for note in _notes(results):
            print(note)
    if out:
        _write_json(out, combined)
        print(f"\nwrote {out}")
    return 1 if failures else 0


def installed_backends() -> list[str]:
    """The backends among `BACKENDS` whose package is installed."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def _sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def _run_subprocess(
    backend: str, quick: bool, rounds: int | None, warmup: int | None
) -> tuple[dict[str, Any] | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="keras-tether-bench-") as folder:
        path = os.path.join(folder, f"{backend}.json")
        command = [
            sys.executable,
            "-m",
            "keras_tether._bench",
            "--backend",
            backend,
            "--out",
            path,
        ]
        if quick:
            command.append("--quick")
        if rounds is not None:
            command += ["--rounds", str(rounds)]
        if warmup is not None:
            command += ["--warmup", str(warmup)]
        env = {**os.environ, "KERAS_BACKEND": backend}
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = completed.stderr.strip().splitlines()[-1:] or ["no message"]
            return None, f"exit code {completed.returncode}: {tail[0]}"
        with open(path) as file:
            return json.load(file), None


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    for backend, result in results.items():
        for comparison in result["comparisons"]:
            params = comparison.get("kernel_params")
            if params:
                notes.append(
                    f"{backend}: tied autoencoder kernels {params['tied']:,} "
                    f"parameters vs {params['untied']:,} untied "
                    f"(total {comparison['total_params']['tied']:,} vs "
                    f"{comparison['total_params']['untied']:,})"
                )
    return notes


def _write_json(path: str, data: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


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


def _jit_compile(model: keras.Model) -> Any:
    value = getattr(model, "jit_compile", None)
    return value if isinstance(value, bool | str) or value is None else str(value)


def _row(
    benchmark: str,
    timing: dict[str, Any],
    ours: str,
    baseline: str,
    target: float | None,
) -> dict[str, Any]:
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
        "ours_ms": models[ours]["median_ms"],
        "baseline_ms": models[baseline]["median_ms"],
        "ratio": ratio,
        "round_ratios": round_ratios,
        "target": target,
        "met": None if target is None else bool(ratio <= target),
    }


def _tensors(arrays: Sequence[np.ndarray]) -> list:
    # Converted once: a NumPy batch would be copied to the backend every step.
    return [ops.convert_to_tensor(array) for array in arrays]


def _random(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape).astype("float32")


def _train_step(model: keras.Model, x: Any, y: Any) -> Callable[[], Any]:
    return lambda: model.train_on_batch(x, y)


def _stress_models(
    sizes: Sizes, with_seed_formula: bool
) -> list[tuple[str, str, keras.Model]]:
    combiners = [
        ("weighted_average", "WeightedAverage", WeightedAverage),
        ("add", "Add", keras.layers.Add),
    ]
    if with_seed_formula:
        combiners.append(("seed_formula", "seed formula", SeedFormula))
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
    x = _tensors([_random(shape, rng) for _ in range(sizes.stress_inputs)])
    (y,) = _tensors([_random(shape, rng)])
    return x, y


def _describe_stress(sizes: Sizes, name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "inputs": sizes.stress_inputs,
        "batch_size": sizes.stress_batch,
        "features": sizes.stress_features,
    }


def _stress(sizes, backend, rounds, warmup):
    x, y = _stress_data(sizes)
    candidates = []
    for key, label, model in _stress_models(sizes, with_seed_formula=True):
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, _train_step(model, x, y)))
    with warnings.catch_warnings():
        # Expected: `Add` has nothing to train, so its step has no backward pass.
        warnings.filterwarnings("ignore", message=".*does not have any trainable")
        timing = time_candidates(candidates, sizes, rounds, warmup)
    comparison = {
        **_describe_stress(
            sizes,
            "stress",
            "training step (train_on_batch) of a model that only combines its "
            "inputs, mse loss",
        ),
        **timing,
    }
    rows = [
        _row(
            "stress",
            timing,
            "weighted_average",
            "add",
            STRESS_TARGETS.get(backend),
        ),
        _row("stress", timing, "seed_formula", "add", None),
    ]
    return comparison, rows


def _stress_forward(sizes, backend, rounds, warmup):
    x, _ = _stress_data(sizes)
    candidates = []
    for key, label, model in _stress_models(sizes, with_seed_formula=False):
        candidates.append(
            Candidate(key, label, model, lambda model=model: model.predict_on_batch(x))
        )
    timing = time_candidates(candidates, sizes, rounds, warmup)
    comparison = {
        **_describe_stress(
            sizes,
            "stress forward",
            "inference step (predict_on_batch) of the stress models: Add has "
            "no weights, so its training step has no backward pass at all",
        ),
        **timing,
    }
    rows = [_row("stress forward", timing, "weighted_average", "add", None)]
    return comparison, rows


def _seed_scenario(sizes, backend, rounds, warmup):
    rng = np.random.default_rng(1)
    x = _tensors(
        [
            _random((sizes.seed_batch, sizes.seed_features), rng)
            for _ in range(sizes.seed_branches)
        ]
    )
    labels = rng.integers(0, sizes.seed_classes, size=sizes.seed_batch)
    (y,) = _tensors([np.eye(sizes.seed_classes, dtype="float32")[labels]])
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
        candidates.append(Candidate(key, label, model, _train_step(model, x, y)))
    timing = time_candidates(candidates, sizes, rounds, warmup)
    rows = [_row("seed scenario", timing, "weighted_average", "add", SEED_TARGET)]
    comparison = {
        "name": "seed scenario",
        "description": (
            f"{sizes.seed_branches} parallel MLPs (Input({sizes.seed_features}) "
            f"-> Dense({sizes.seed_hidden}, relu) -> Dense({sizes.seed_classes})) "
            "combined, whole training step with adam and cross-entropy"
        ),
        "batch_size": sizes.seed_batch,
        **timing,
    }
    return comparison, rows


def _tied_autoencoder(sizes, backend, rounds, warmup):
    rng = np.random.default_rng(2)
    shape = (sizes.autoencoder_batch, sizes.autoencoder_input)
    (x,) = _tensors([rng.random(shape).astype("float32")])
    units = list(sizes.autoencoder_units)
    tied = ties.tied_autoencoder(sizes.autoencoder_input, units)
    layers: list[Any] = [keras.Input(shape=(sizes.autoencoder_input,))]
    layers += [keras.layers.Dense(size, activation="relu") for size in units]
    layers += [keras.layers.Dense(size, activation="relu") for size in units[-2::-1]]
    layers.append(keras.layers.Dense(sizes.autoencoder_input))
    untied = keras.Sequential(layers, name="untied_autoencoder")
    candidates = []
    for key, label, model in (
        ("tied", "tied (DenseTranspose)", tied),
        ("untied", "untied (Dense)", untied),
    ):
        model.compile(optimizer="adam", loss="mse")
        candidates.append(Candidate(key, label, model, _train_step(model, x, x)))
    timing = time_candidates(candidates, sizes, rounds, warmup)
    rows = [_row("tied autoencoder", timing, "tied", "untied", AUTOENCODER_TARGET)]
    comparison = {
        "name": "tied autoencoder",
        "description": (
            f"dense autoencoder {sizes.autoencoder_input}->"
            + "->".join(str(size) for size in units)
            + " (relu) and its mirror, whole training step with adam and mse"
        ),
        "batch_size": sizes.autoencoder_batch,
        "kernel_params": {
            "tied": _kernel_params(tied),
            "untied": _kernel_params(untied),
        },
        "total_params": {
            "tied": ties.count_params(tied),
            "untied": ties.count_params(untied),
        },
        **timing,
    }
    return comparison, rows


def _kernel_params(model: keras.Model) -> int:
    kernels = {id(w): w for w in model.weights if w.path.endswith("kernel")}
    return sum(int(np.prod(w.shape)) for w in kernels.values())


if __name__ == "__main__":
    sys.exit(main())
