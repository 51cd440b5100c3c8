"""Public layers of keras-tether."""

from keras_tether.layers._ensemble import Ensemble
from keras_tether.layers._gated_average import GatedAverage
from keras_tether.layers._mixture_of_experts import MixtureOfExperts
from keras_tether.layers._parallel_dense import ParallelDense
from keras_tether.layers._parametrized import Parametrized
from keras_tether.layers._reversible_conv import (
    ReversibleConv1D,
    ReversibleConv2D,
    ReversibleConv3D,
)
from keras_tether.layers._reversible_dense import ReversibleDense
from keras_tether.layers._weighted_average import WeightedAverage, weighted_average

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
    "weighted_average",
]
