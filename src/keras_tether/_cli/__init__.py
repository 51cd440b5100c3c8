"""The `keras-tether` command line: `inspect` a saved model.

The parser needs no Keras: `inspect` imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence

PROG = "keras-tether"

# The exit codes of every command, as `--help` lists them.
EXIT_CODES = {
    0: "success",
    2: "bad arguments, or a model file or module that cannot be read",
    130: "interrupted (Ctrl-C)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `keras-tether` command line and returns its exit code.

    Args:
        argv: The arguments after the program name; defaults to `sys.argv[1:]`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; building and using it imports no Keras."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Keras 3 layers with structured weights: learnable mixtures whose "
            "weights stay on the probability simplex (WeightedAverage) and "
            "layers whose weights are tied to another layer's."
        ),
        epilog=(
            f"Run '{PROG} COMMAND --help' for the options of a command. "
            "Exit codes: "
            + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
            + "."
        ),
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the versions of keras-tether and Keras, and the backend",
    )
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND"
    )

    inspect = commands.add_parser(
        "inspect",
        help="list the mixtures, tied weights and parameter savings of a model",
        description=(
            "Load a model saved with model.save('model.keras') (safe mode, so "
            "no code in the file runs) and list every WeightedAverage with its "
            "current weights, every tie between layers with the variables it "
            "shares, and the parameter count with and without the ties."
        ),
    )
    inspect.add_argument("model", metavar="MODEL.keras", help="the saved model")
    inspect.add_argument(
        "--json",
        action="store_true",
        help="print JSON with the keys 'mixtures', 'ties' and 'params'",
    )
    inspect.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help=(
            "import this module first, as `import MODULE` would from the "
            "current folder, so that the transforms, simplex maps and layers "
            "it registers are known when the model loads; may be repeated"
        ),
    )
    inspect.set_defaults(handler=_run_inspect)

    return parser


class _VersionAction(argparse.Action):
    """Prints the versions without importing Keras, which takes seconds."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def version_line() -> str:
    """`keras-tether X (keras Y, backend Z)`, the backend Keras uses or will use."""
    return (
        f"{PROG} {_distribution_version('keras-tether')} "
        f"(keras {_distribution_version('keras')}, backend {_backend()})"
    )


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _backend() -> str:
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    # What Keras will read on import: the variable, else keras.json, else its
    # default.
    from keras_tether._backend_choice import configured_backend

    return os.environ.get("KERAS_BACKEND") or configured_backend() or "tensorflow"


def _run_inspect(args: argparse.Namespace) -> int:
    from keras_tether._cli import _inspect

    for module in args.imports:
        try:
            _import_user_module(module)
        except Exception as error:  # the user's module may raise anything
            print(
                f"{PROG}: cannot import module '{module}': "
                f"{type(error).__name__}: {error}",
                file=sys.stderr,
            )
            return 2
    try:
        report = _inspect.inspect_file(args.model)
    except _inspect.ModelReadError as error:
        print(f"{PROG}: cannot read model '{args.model}': {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_inspect.format_report(report, title=f"Model file: {args.model}"))
    return 0


def _import_user_module(name: str) -> None:
    # As `python -m` does, the current folder comes first on the path: the
    # installed command's own folder is there instead.
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    importlib.import_module(name)
