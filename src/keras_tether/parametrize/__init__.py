"""Constraints by construction: maps from free parameters to constrained weights.

Each `Parametrization` turns an unconstrained tensor into a weight that lies
in a set (orthogonal, positive, unit norm, on the simplex, ...) whatever the
tensor is. `keras_tether.layers.Parametrized` applies them to any layer's
weights, so that training updates the free parameter and the layer always
computes with a constrained weight.
"""

from keras_tether.parametrize._base import Parametrization, deserialize, serialize
from keras_tether.parametrize._cached import cached
from keras_tether.parametrize._low_rank import LowRank
from keras_tether.parametrize._norm import UnitNorm, WeightNorm
from keras_tether.parametrize._orthogonal import Orthogonal
from keras_tether.parametrize._positive import Positive
from keras_tether.parametrize._simplex import Simplex
from keras_tether.parametrize._spectral_norm import SpectralNorm
from keras_tether.parametrize._symmetric import Skew, Symmetric

__all__ = [
    "LowRank",
    "Orthogonal",
    "Parametrization",
    "Positive",
    "Simplex",
    "Skew",
    "SpectralNorm",
    "Symmetric",
    "UnitNorm",
    "WeightNorm",
    "cached",
    "deserialize",
    "serialize",
]
