"""`python -m benchmarks` (`make bench`): every backend, each in its own process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks import _args, runner


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the arguments, runs the benchmark and returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Time training steps of models built with keras-tether against "
            "what a user would otherwise write (plain Keras layers, the "
            "hand-written keras.ops form, a peer library, the floor), once per "
            "backend, each backend in its own process, and print a table of "
            "step times and ratios with their targets."
        ),
    )
    parser.add_argument(
        "--backends",
        type=_args.backend_list,
        metavar="LIST",
        help="comma-separated backends to measure, from "
        f"{','.join(_args.BACKENDS)} (default: those installed)",
    )
    _args.add_timing_arguments(parser)
    parser.add_argument(
        "--out",
        metavar="FILE.json",
        help="also write every number, with the environment, to this JSON file",
    )
    args = parser.parse_args(argv)
    backends = args.backends or _args.installed_backends()
    if not backends:
        print(
            f"{runner.PROG}: no backend to measure: none of "
            f"{', '.join(_args.BACKENDS)} is installed",
            file=sys.stderr,
        )
        return 2
    try:
        return runner.run_all(
            backends,
            quick=args.quick,
            rounds=args.rounds,
            warmup=args.warmup,
            out=args.out,
            scenario_names=args.scenarios,
        )
    except KeyboardInterrupt:
        print(f"{runner.PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
