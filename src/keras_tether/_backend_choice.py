"""Chooses an importable Keras backend before Keras is imported."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

# Tried in this order when Keras would otherwise fall back to TensorFlow.
FALLBACK_BACKENDS = ("jax", "torch")


def choose_backend() -> str | None:
    """Sets `KERAS_BACKEND` when Keras' default backend cannot be imported.

    Keras uses TensorFlow unless the `KERAS_BACKEND` environment variable or
    `keras.json` names another backend, so on a machine with only JAX or
    PyTorch installed `import keras` fails. Only in exactly that case this
    sets `KERAS_BACKEND` to the first installed of `FALLBACK_BACKENDS`.

    A `keras.json` that names TensorFlow counts as naming no backend: Keras
    writes that file itself, with TensorFlow in it, the first time it is
    imported, whatever `KERAS_BACKEND` says. Any other backend named there,
    and any `KERAS_BACKEND`, is the user's choice and is left alone.

    Returns:
        The backend that was set, or `None` when nothing was changed.
    """
    if "keras" in sys.modules:
        # Keras reads the backend once, on import: it is settled already.
        return None
    if os.environ.get("KERAS_BACKEND"):
        return None
    if configured_backend() not in (None, "tensorflow"):
        return None
    if _installed("tensorflow"):
        return None
    for backend in FALLBACK_BACKENDS:
        if _installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return backend
    return None


def configured_backend() -> str | None:
    """The backend named in `keras.json`, found where Keras looks for it."""
    if "KERAS_HOME" in os.environ:
        keras_dir = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        # Keras itself moves its directory to /tmp when the home is read-only.
        base = home if os.access(home, os.W_OK) else "/tmp"
        keras_dir = os.path.join(base, ".keras")
    path = os.path.expanduser(os.path.join(keras_dir, "keras.json"))
    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
