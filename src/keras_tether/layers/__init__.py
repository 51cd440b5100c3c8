"""Public layers of keras-tether."""

from keras_tether.layers._conv_transpose import ConvTranspose
from keras_tether.layers._dense_transpose import DenseTranspose
from keras_tether.layers._embedding_transpose import EmbeddingTranspose
from keras_tether.layers._ensemble import Ensemble
from keras_tether.layers._gated_average import GatedAverage
from keras_tether.layers._mixture_of_experts import MixtureOfExperts
from keras_tether.layers._mixture_regularizers import EntropyRegularizer
from keras_tether.layers._parallel_dense import ParallelDense
from keras_tether.layers._parametrized import Parametrized
from keras_tether.layers._tied_dense import TiedDense
from keras_tether.layers._tied_layer import TiedLayer
from keras_tether.layers._weighted_average import WeightedAverage, weighted_average

__all__ = [
    "ConvTranspose",
    "DenseTranspose",
    "EmbeddingTranspose",
    "Ensemble",
    "EntropyRegularizer",
    "GatedAverage",
    "MixtureOfExperts",
    "ParallelDense",
    "Parametrized",
    "TiedDense",
    "TiedLayer",
    "WeightedAverage",
    "weighted_average",
]
