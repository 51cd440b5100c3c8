"""Maps from free parameters (logits) to the probability simplex.

Each map turns logits into non-negative weights that sum to 1 along an axis,
in float32 whatever the input dtype, and accepts a boolean `mask` that gives
chosen entries weight exactly 0. Every map is both a function (`softmax`,
`sparsemax`, `entmax15`, `relu_normalized`, `gumbel_softmax`) and a
serializable `SimplexMap` object (`Softmax`, `Sparsemax`, `Entmax15`,
`ReluNormalized`, `GumbelSoftmax`) that a layer can hold; `get` builds one
from a name or a config.
"""

from keras_tether.simplex._base import SimplexMap
from keras_tether.simplex._entmax import Entmax15, entmax15
from keras_tether.simplex._gumbel_softmax import GumbelSoftmax, gumbel_softmax
from keras_tether.simplex._registry import deserialize, get, serialize
from keras_tether.simplex._relu_normalized import ReluNormalized, relu_normalized
from keras_tether.simplex._softmax import Softmax, softmax
from keras_tether.simplex._sparsemax import Sparsemax, sparsemax

__all__ = [
    "Entmax15",
    "GumbelSoftmax",
    "ReluNormalized",
    "SimplexMap",
    "Softmax",
    "Sparsemax",
    "deserialize",
    "entmax15",
    "get",
    "gumbel_softmax",
    "relu_normalized",
    "serialize",
    "softmax",
    "sparsemax",
]
