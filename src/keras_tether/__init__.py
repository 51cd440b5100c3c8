"""keras-tether: Keras 3 layers whose weights carry structure.

Learnable mixtures whose weights stay on the probability simplex, and layers
whose weights are tied to another layer's, on every Keras backend.
"""

from importlib.metadata import PackageNotFoundError, version

from keras_tether import callbacks, layers, simplex, ties
from keras_tether.layers import (
    ConvTranspose,
    DenseTranspose,
    EmbeddingTranspose,
    TiedDense,
    TiedLayer,
    WeightedAverage,
    weighted_average,
)
from keras_tether.ties import tied_autoencoder

try:
    __version__ = version("keras-tether")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "ConvTranspose",
    "DenseTranspose",
    "EmbeddingTranspose",
    "TiedDense",
    "TiedLayer",
    "WeightedAverage",
    "__version__",
    "callbacks",
    "layers",
    "simplex",
    "tied_autoencoder",
    "ties",
    "weighted_average",
]
