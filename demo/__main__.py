"""`python -m demo` (`make demo`): run the experiments and write the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the arguments, runs the demo and returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=(
            "Run four small experiments on scikit-learn's 8x8 digits: a "
            "learned mixture of three branches, a tied autoencoder against an "
            "untied one, 16 stacked MLPs against 16 separate ones, and a deep "
            "ensemble of 8 CNNs as one Ensemble layer against one member; write "
            "report.md, results.json and PNG plots. Needs the 'demo' extra: "
            "pip install 'keras-tether[demo]'."
        ),
    )
    parser.add_argument(
        "--out",
        default="demo-output",
        metavar="DIR",
        help="folder for the report and plots, created if missing "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="training epochs of every model (default: the demo's own)",
    )
    args = parser.parse_args(argv)
    from demo import experiments

    try:
        return experiments.run(out_dir=args.out, epochs=args.epochs)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
