"""Regularizers of keras-tether: penalties on a mixture's weights."""

from keras_tether.regularizers._entropy_regularizer import EntropyRegularizer

__all__ = ["EntropyRegularizer"]
