"""keras-tether: Keras 3 layers whose weights carry structure.

Learnable mixtures whose weights stay on the probability simplex, and layers
whose weights are tied to another layer's, on every Keras backend.
"""

from importlib.metadata import PackageNotFoundError, version

from keras_tether._backend_choice import choose_backend

# A library should not pick the user's backend. This one steps in only where
# `import keras` would otherwise fail: no backend chosen, so Keras defaults to
# TensorFlow, and TensorFlow is not installed. It must run before anything
# below imports Keras, which reads the backend once, on import.
choose_backend()

from keras_tether import (  # noqa: E402
    callbacks,
    distribution,
    layers,
    moe,
    ops,
    parametrize,
    regularizers,
    simplex,
    ties,
)
from keras_tether.layers import (  # noqa: E402
    Ensemble,
    GatedAverage,
    MixtureOfExperts,
    ParallelDense,
    Parametrized,
    ReversibleConv1D,
    ReversibleConv2D,
    ReversibleConv3D,
    ReversibleDense,
    WeightedAverage,
    weighted_average,
)
from keras_tether.ties import tied_autoencoder  # noqa: E402

try:
    __version__ = version("keras-tether")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Ensemble",
    "GatedAverage",
    "MixtureOfExperts",
    "ParallelDense",
    "Parametrized",
    "ReversibleConv1D",
    "ReversibleConv2D",
    "ReversibleConv3D",
    "ReversibleDense",
    "WeightedAverage",
    "__version__",
    "callbacks",
    "distribution",
    "layers",
    "moe",
    "ops",
    "parametrize",
    "regularizers",
    "simplex",
    "tied_autoencoder",
    "ties",
    "weighted_average",
]
