"""Callbacks for models built with keras-tether."""

from keras_tether.callbacks._mixture_weights_history import MixtureWeightsHistory

__all__ = ["MixtureWeightsHistory"]
