"""Dropless dispatch: token-expert assignments sorted into tiles and back.

Shared by `MixtureOfExperts(dispatch="dropless")` and `keras_tether.moe`.
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_tether._types import Tensor
from keras_tether.ops._grouped_matmul import TiledLayout, default_tile, tiled_layout


class Assignments(NamedTuple):
    """Where each token-expert assignment sits in the tiled layout."""

    layout: TiledLayout
    slot_tokens: Tensor
    """Int32 `(slots,)`: the token each slot reads (0 for padding)."""
    assignment_slots: Tensor
    """Int32 `(tokens * top_k,)`: the slot of each assignment, token-major."""


def sort_assignments(
    expert_indices: Tensor, routed: Tensor, num_experts: int
) -> Assignments:
    """Sorts the assignments `(tokens, top_k)` by expert into tiles.

    `routed` `(tokens, top_k)` says which assignments are computed; the
    others go to a virtual expert past the last, which sorts them after
    every group, so that no tile holds them.
    """
    tokens, top_k = expert_indices.shape
    rows = tokens * top_k
    expert_of = ops.where(routed, ops.cast(expert_indices, "int32"), num_experts)
    expert_of = ops.reshape(expert_of, (rows,))
    order = ops.argsort(expert_of)
    sorted_experts = ops.take(expert_of, order, axis=0)
    group_ends = ops.searchsorted(
        sorted_experts, ops.arange(num_experts, dtype="int32"), side="right"
    )
    group_ends = ops.cast(group_ends, "int32")
    group_sizes = group_ends - ops.concatenate(
        [ops.zeros((1,), "int32"), group_ends[:-1]]
    )
    layout = tiled_layout(group_sizes, rows, default_tile(rows, num_experts))
    # Slot -> sorted assignment -> assignment -> its token.
    slot_tokens = ops.take(order, layout.slot_rows, axis=0) // top_k
    assignment_slots = ops.take(layout.row_slots, ops.argsort(order), axis=0)
    return Assignments(layout, slot_tokens, assignment_slots)


def combine(results: Tensor, assignments: Assignments, gates: Tensor) -> Tensor:
    """Per-slot results `(slots, d)` -> each token's gated sum `(tokens, d)`.

    `gates` `(tokens, top_k)` must be zero for assignments not computed.
    """
    tokens, top_k = gates.shape
    picked = ops.take(results, assignments.assignment_slots, axis=0)
    picked = ops.reshape(picked, (tokens, top_k, results.shape[-1]))
    gates = ops.cast(gates, picked.dtype)
    return ops.sum(picked * gates[..., None], axis=1)
