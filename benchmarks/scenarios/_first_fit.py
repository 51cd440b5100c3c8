"""The first fit of a model in a fresh process: its time and peak memory.

Tracing and compiling a training step is a cost paid once per process, and
what it leaves behind (compiled functions, caches) would make a second model
of the same shape compile faster. Each measurement therefore runs in its own
interpreter, started with `python -m` on this module, which builds the
model, times its first `train_on_batch` and reports, as one JSON line, that
time and how far the process's peak resident memory rose above what the
backend and the data already held.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks import child_environment

# Peak resident memory is in kilobytes on Linux, in bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def measure(backend: str, branches: int, mixer: str, quick: bool) -> dict[str, Any]:
    """Runs one first fit in a fresh process on `backend`.

    Args:
        backend: String, the Keras backend of the child process.
        branches: Integer, the number of branches of the list model.
        mixer: String, `"weighted"` (`WeightedAverage`) or `"average"`
            (`keras.layers.Average`).
        quick: Boolean, whether to use the tiny sizes.

    Returns:
        A dict with `seconds` (the first `train_on_batch`), `peak_mb` (the
        rise of the peak resident memory during it) and `jit_compile`.
    """
    command = [
        sys.executable,
        "-m",
        __name__,
        str(branches),
        mixer,
        "quick" if quick else "full",
    ]
    completed = subprocess.run(
        command,
        env=child_environment(backend),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        message = (completed.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(
            f"The first fit of {branches} branches mixed by {mixer!r} on "
            f"{backend} failed (exit code {completed.returncode}): {message}"
        )
    return json.loads(lines[-1])


def _peak_bytes() -> int:
    # Linux keeps a process's ru_maxrss across exec, so a child started by a
    # large benchmark process would report its parent's peak; the memory
    # map's own high-water mark (VmHWM) starts afresh with the new program.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


def _main(argv: list[str]) -> None:
    branches, mixer, size = int(argv[0]), argv[1], argv[2]
    if mixer not in ("weighted", "average"):
        raise ValueError(
            "Expected the mixer to be 'weighted' or 'average'. "
            f"Received: mixer={mixer!r}"
        )
    import keras

    from benchmarks.scenarios import parallel
    from benchmarks.timing import _jit_compile
    from keras_tether.layers import WeightedAverage

    sizes = parallel.QUICK if size == "quick" else parallel.FULL
    x, y = parallel._data(sizes)
    layer = WeightedAverage() if mixer == "weighted" else keras.layers.Average()
    model = parallel._list_model(sizes, branches, layer)
    before = _peak_bytes()
    start = time.perf_counter()
    model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "peak_mb": (_peak_bytes() - before) / 2**20,
        "jit_compile": _jit_compile(model),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
