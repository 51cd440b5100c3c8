"""The benchmark's argument parsing.

Nothing here imports Keras or a backend: the parser, `--help` and the
argument checks answer at once.
"""

from __future__ import annotations

import argparse
import importlib.util

BACKENDS = ("tensorflow", "jax", "torch")


def installed_backends() -> list[str]:
    """The backends among `BACKENDS` whose package is installed."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def positive_int(text: str) -> int:
    """Parses a positive integer command-line argument."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def backend_list(text: str) -> list[str]:
    """Parses a comma-separated list of installed backends, without repeats."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(BACKENDS)}; got {text!r}"
        )
    missing = [name for name in names if name not in installed_backends()]
    if missing:
        raise argparse.ArgumentTypeError(f"not installed: {', '.join(missing)}")
    return list(dict.fromkeys(names))


def scenario_list(text: str) -> list[str]:
    """Parses a comma-separated list of benchmark scenarios, without repeats."""
    # Imported here: the registry is light (no Keras), but it belongs to bench.
    from benchmarks.scenarios import MODULES

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODULES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(MODULES)}; got {text!r}"
        )
    return list(dict.fromkeys(names))


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the benchmark's `--scenarios`, `--rounds`, `--warmup` and `--quick`."""
    # Imported here, not at the top: `timing` is light, but it belongs to bench.
    from benchmarks.scenarios import MODULES
    from benchmarks.timing import FULL_BUDGET, QUICK_BUDGET

    parser.add_argument(
        "--scenarios",
        type=scenario_list,
        metavar="LIST",
        help=(
            "comma-separated scenarios to run, in their own order, from "
            f"{','.join(MODULES)} (default: all)"
        ),
    )

    parser.add_argument(
        "--rounds",
        type=positive_int,
        metavar="N",
        help=(
            f"timed rounds per comparison (default {FULL_BUDGET.rounds}, "
            f"or {QUICK_BUDGET.rounds} with --quick)"
        ),
    )
    parser.add_argument(
        "--warmup",
        type=positive_int,
        metavar="N",
        help=(
            "untimed steps per model before timing, which include compilation "
            f"(default {FULL_BUDGET.warmup}, or {QUICK_BUDGET.warmup} with --quick)"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models and few rounds: checks that everything runs, in seconds",
    )
