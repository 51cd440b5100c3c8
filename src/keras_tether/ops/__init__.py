"""Tensor operations that `keras.ops` lacks, written in `keras.ops`.

`grouped_matmul` multiplies the rows of each group of a sorted matrix by that
group's kernel: the core of a dropless mixture of experts.
"""

from keras_tether.ops._grouped_matmul import grouped_matmul

__all__ = ["grouped_matmul"]
