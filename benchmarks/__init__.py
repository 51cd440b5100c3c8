"""keras-tether's benchmarks: what each structure costs per training step.

Every comparison builds all of its models first, compiles and warms up each
(the first steps trace and compile on JAX and TensorFlow), then runs rounds:
in each round every model runs the same number of steps back to back, the
order rotating from round to round, and its time per step is recorded. The
report gives each model's median step time and the median over rounds of the
per-round ratio ours / baseline, which cancels the slow drifts of a shared
machine that would bias a ratio of medians.

The modules:

- `timing`: the timing budget and the rotating, warmed-up measurement.
- `schema`: the one JSON schema of a result row, shared by every scenario.
- `scenarios`: the compared models, one module per family of scenarios.
- `runner`: runs every scenario on one backend, or each backend in its own
  subprocess, and writes the JSON.
- `report`: the text table and the notes printed at the end.

`make bench` (`python -m benchmarks`, from the repository's root) runs each
backend in its own subprocess. One backend, the one Keras is using, can be
measured directly:

    KERAS_BACKEND=jax python -m benchmarks.backend --out jax.json
"""

import os

# The folder that holds this package: the repository's root.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_environment(backend: str) -> dict[str, str]:
    """The environment of a measuring subprocess on `backend`.

    The child imports `benchmarks` from the repository, whatever its folder.
    """
    paths = [REPOSITORY, *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join(paths),
    }
