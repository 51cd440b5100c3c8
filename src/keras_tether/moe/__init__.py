"""Mixture-of-experts tools for models built elsewhere.

`sparsify(model)` makes the MoE blocks of keras-hub models compute only each
token's chosen experts, on the variables they already have.
"""

from keras_tether.moe._sparsify import sparsify

__all__ = ["sparsify"]
