"""What the `keras-tether` process does before Keras is imported.

Importing Keras imports a backend, which takes seconds (TensorFlow prints its
log lines on the way). The package's `__init__` calls `prepare_command_line`
before it imports Keras; in any process other than the `keras-tether`
command it does nothing. In that command it parses the arguments with a
parser that needs no Keras, so `--help`, `--version`, a missing command and
a bad argument are answered at once; otherwise it imports Keras itself (and
TensorFlow for a command that trains), printing each of TensorFlow's
start-up log lines once (TensorFlow logs them once per native library it
loads).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

COMMAND = "keras-tether"

# The names of the command's script: on Windows pip writes an `.exe` launcher.
_SCRIPT_NAMES = {COMMAND, f"{COMMAND}.exe", f"{COMMAND}-script.py"}

# The prefix of a native log line ("I0000 00:00:17953.21 12329 "): the time
# and thread differ between two copies of the same message.
_LOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ")


def is_command_line() -> bool:
    """Whether this process is the `keras-tether` command."""
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(argv[0]) in _SCRIPT_NAMES


def prepare_command_line() -> None:
    """Answers what needs no Keras, or imports Keras quietly; see the module."""
    if "keras" in sys.modules or not is_command_line():
        return
    from keras_tether._cli import build_parser

    parser = build_parser()
    # Exits for --help, --version and a bad argument, none of which needs Keras.
    args = parser.parse_args(sys.argv[1:])
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(2)
    with _each_native_log_line_once():
        import keras  # noqa: F401

        # Keras' training loop imports TensorFlow, where it is installed, on
        # any backend: the demo, which trains, imports it here instead.
        if args.command == "demo" and importlib.util.find_spec("tensorflow"):
            import tensorflow  # noqa: F401


@contextlib.contextmanager
def _each_native_log_line_once():
    # Native libraries write to the file descriptor, not to `sys.stderr`, so
    # the descriptor is pointed at a file for the import and replayed after.
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(descriptor)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), descriptor)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, descriptor)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write(_without_repeats(text))
            sys.stderr.flush()


def _without_repeats(text: str) -> str:
    seen = set()
    kept = []
    for line in text.splitlines(keepends=True):
        key = _LOG_PREFIX.sub("", line)
        if key in seen:
            continue
        seen.add(key)
        kept.append(line)
    return "".join(kept)
