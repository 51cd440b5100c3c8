"""`grouped_matmul`: each group of rows times its own kernel, static shapes."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from keras import ops

from keras_tether._types import Tensor
from keras_tether._validation import check_positive_int

# The largest tile: at 128 rows a tile's product is large enough to run at
# full matrix-multiply speed on CPUs and accelerators alike.
_MAX_TILE = 128
_MIN_TILE = 8


class TiledLayout(NamedTuple):
    """Where the rows of each group sit once each group is padded to tiles.

    `tiles` tiles of `tile` slots each: group `g` takes
    `ceil(group_sizes[g] / tile)` consecutive tiles, its rows first, in order.
    """

    tile: int
    tiles: int
    slot_rows: Tensor
    """Int32 `(tiles * tile,)`: the row each slot holds (0 for padding)."""
    tile_groups: Tensor
    """Int32 `(tiles,)`: the group of each tile (the last for unused tiles)."""
    row_slots: Tensor
    """Int32 `(rows,)`: the slot of each row (0 for rows in no group)."""
    row_valid: Tensor
    """Boolean `(rows,)`: whether the row belongs to a group."""


def default_tile(rows: int, groups: int) -> int:
    """A power of two near the mean group size, between 8 and 128.

    Padding costs at most one tile per group, so the tile shrinks with the
    mean group size; it stays at least 8 rows to keep each product efficient.
    """
    mean = max(rows // max(groups, 1), 1)
    return max(_MIN_TILE, min(_MAX_TILE, 2 ** int(math.log2(mean))))


def tiled_layout(group_sizes: Tensor, rows: int, tile: int) -> TiledLayout:
    """The static-shape layout of `rows` sorted rows in `len(group_sizes)` groups."""
    groups = group_sizes.shape[0]
    sizes = ops.cast(group_sizes, "int32")
    ends = ops.cumsum(sizes)
    starts = ends - sizes
    group_tiles = (sizes + (tile - 1)) // tile
    tile_ends = ops.cumsum(group_tiles)
    tile_starts = tile_ends - group_tiles
    # sum_g ceil(s_g / tile) <= ceil(rows / tile) + groups - 1 whenever
    # sum_g s_g <= rows: a static bound on the tiles used.
    tiles = -(-rows // tile) + groups - 1
    last = groups - 1
    # A tile's group: how many groups end at or before it (empty groups end
    # where they start, so they are skipped).
    tile_groups = ops.cast(
        ops.searchsorted(tile_ends, ops.arange(tiles, dtype="int32"), side="right"),
        "int32",
    )
    tile_groups = ops.minimum(tile_groups, last)
    slots = ops.arange(tiles * tile, dtype="int32")
    slot_groups = ops.take(tile_groups, slots // tile, axis=0)
    offsets = slots - ops.take(tile_starts, slot_groups, axis=0) * tile
    in_group = offsets < ops.take(sizes, slot_groups, axis=0)
    slot_rows = ops.where(in_group, ops.take(starts, slot_groups, axis=0) + offsets, 0)
    row_index = ops.arange(rows, dtype="int32")
    row_groups = ops.cast(ops.searchsorted(ends, row_index, side="right"), "int32")
    row_valid = row_groups < groups
    row_groups = ops.minimum(row_groups, last)
    row_slots = (
        ops.take(tile_starts, row_groups, axis=0) * tile
        + row_index
        - ops.take(starts, row_groups, axis=0)
    )
    row_slots = ops.where(row_valid, row_slots, 0)
    return TiledLayout(tile, tiles, slot_rows, tile_groups, row_slots, row_valid)


def tiled_product(
    padded: Tensor, kernels: Tensor, layout: TiledLayout, bias: Tensor | None = None
) -> Tensor:
    """Padded rows `(tiles * tile, k)` times their tile's kernel (plus bias)."""
    tiles = ops.reshape(padded, (layout.tiles, layout.tile, padded.shape[-1]))
    groups, rows, columns = kernels.shape
    # Gathering whole kernels as rows of a matrix: torch's CPU gather along
    # the first axis of a 3-D tensor is many times slower than of a 2-D one.
    tile_kernels = ops.take(
        ops.reshape(kernels, (groups, rows * columns)), layout.tile_groups, axis=0
    )
    tile_kernels = ops.reshape(tile_kernels, (layout.tiles, rows, columns))
    products = ops.matmul(tiles, tile_kernels)
    if bias is not None:
        products = products + ops.take(bias, layout.tile_groups, axis=0)[:, None, :]
    return ops.reshape(products, (layout.tiles * layout.tile, kernels.shape[-1]))


def grouped_matmul(
    inputs: Tensor,
    kernels: Tensor,
    group_sizes: Tensor,
    tile_size: int | None = None,
) -> Tensor:
    """Multiplies each group of rows of `inputs` by its group's kernel.

    The rows of `inputs` are sorted by group: the first `group_sizes[0]`
    rows belong to group 0, the next `group_sizes[1]` to group 1, and so on.
    Row `i` of group `g` gives `output[i] = inputs[i] @ kernels[g]`; rows
    past `sum(group_sizes)` belong to no group and give zeros. This is
    `jax.lax.ragged_dot`'s product, and the expert computation of a
    dropless mixture of experts (the rows are the token-expert assignments
    sorted by expert).

    The output shape is static, whatever the group sizes, so the function
    compiles with XLA and runs under `jit_compile`. It is written in
    `keras.ops` only, with gradients for `inputs` and `kernels` on every
    backend: each group's rows are padded to a multiple of a tile of
    `tile_size` rows, at most `ceil(rows / tile_size) + groups - 1` tiles
    are multiplied by their group's kernel in one batched matrix product,
    and the results are gathered back in row order. The work grows with
    the number of rows, not with the number of groups times rows.

    Args:
        inputs: A tensor `(rows, in_features)`, sorted by group.
        kernels: A tensor `(groups, in_features, out_features)`.
        group_sizes: An integer tensor `(groups,)` of non-negative sizes
            summing to at most `rows`.
        tile_size: Optional positive integer, the rows of a tile. Defaults
            to a power of two near `rows / groups`, between 8 and 128.

    Returns:
        A tensor `(rows, out_features)`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_tether.ops import grouped_matmul
    >>> x = np.arange(8.0).reshape(4, 2).astype("float32")
    >>> w = np.stack([np.eye(2), 2 * np.eye(2)]).astype("float32")
    >>> y = grouped_matmul(x, w, np.array([1, 3], "int32"))
    >>> keras.ops.convert_to_numpy(y).tolist()
    [[0.0, 1.0], [4.0, 6.0], [8.0, 10.0], [12.0, 14.0]]
    """
    inputs = ops.convert_to_tensor(inputs)
    kernels = ops.convert_to_tensor(kernels)
    group_sizes = ops.convert_to_tensor(group_sizes)
    rows, groups = _check_shapes(inputs, kernels, group_sizes)
    if tile_size is None:
        tile = default_tile(rows, groups)
    else:
        tile = check_positive_int(tile_size, "tile_size")
    layout = tiled_layout(group_sizes, rows, tile)
    padded = ops.take(inputs, layout.slot_rows, axis=0)
    products = tiled_product(padded, kernels, layout)
    outputs = ops.take(products, layout.row_slots, axis=0)
    return ops.where(layout.row_valid[:, None], outputs, ops.zeros_like(outputs))


def _check_shapes(inputs: Any, kernels: Any, group_sizes: Any) -> tuple[int, int]:
    if len(inputs.shape) != 2 or inputs.shape[0] is None:
        raise ValueError(
            "Expected `inputs` to be a matrix `(rows, in_features)` with a known "
            f"number of rows. Received: inputs.shape={tuple(inputs.shape)}"
        )
    if len(kernels.shape) != 3:
        raise ValueError(
            "Expected `kernels` to have shape `(groups, in_features, "
            f"out_features)`. Received: kernels.shape={tuple(kernels.shape)}"
        )
    if kernels.shape[1] != inputs.shape[1]:
        raise ValueError(
            "Expected `kernels.shape[1]` to equal the features of `inputs` "
            f"({inputs.shape[1]}). Received: kernels.shape={tuple(kernels.shape)}"
        )
    if len(group_sizes.shape) != 1 or group_sizes.shape[0] != kernels.shape[0]:
        raise ValueError(
            "Expected `group_sizes` to be a vector with one size per kernel "
            f"({kernels.shape[0]}). Received: "
            f"group_sizes.shape={tuple(group_sizes.shape)}"
        )
    if "int" not in str(ops.dtype(group_sizes)):
        raise TypeError(
            "Expected `group_sizes` to be an integer tensor. Received: "
            f"group_sizes of dtype {ops.dtype(group_sizes)}"
        )
    if kernels.shape[0] == 0:
        raise ValueError(
            "Expected at least one group. Received: "
            f"kernels.shape={tuple(kernels.shape)}"
        )
    return int(inputs.shape[0]), int(kernels.shape[0])
