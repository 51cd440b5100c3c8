"""Tensor helpers shared by the simplex maps, written with `keras.ops` only."""

from keras import ops

from keras_tether._types import Tensor
from keras_tether._validation import check_axis_in_range, check_broadcastable


def prepare_logits(
    logits: Tensor, axis: int, mask: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Returns float32 logits and the boolean mask of kept entries, or `None`.

    A slice whose entries are all masked keeps all of them instead: there would
    be no entry left to carry its weight.

    Non-finite logits mean the same on every map: an entry at -inf gets weight
    0, and a slice holding NaN or +inf, or nothing above -inf, becomes NaN
    throughout, so that a diverged logit shows in the loss instead of as
    plausible weights.
    """
    logits = ops.cast(logits, "float32")
    check_axis_in_range(axis, len(logits.shape), "logits")
    invalid = ops.logical_or(
        ops.any(
            ops.logical_or(ops.isnan(logits), ops.equal(logits, float("inf"))),
            axis=axis,
            keepdims=True,
        ),
        ops.all(ops.equal(logits, float("-inf")), axis=axis, keepdims=True),
    )
    logits = ops.where(invalid, float("nan"), logits)
    if mask is None:
        return logits, None
    mask = ops.convert_to_tensor(mask)
    check_broadcastable(tuple(mask.shape), tuple(logits.shape), "mask", "logits")
    keep = ops.broadcast_to(ops.cast(mask, "bool"), ops.shape(logits))
    nothing_kept = ops.logical_not(ops.any(keep, axis=axis, keepdims=True))
    return logits, ops.logical_or(keep, nothing_kept)


def kept_max(x: Tensor, keep: Tensor | None, axis: int) -> Tensor:
    """The maximum of `x` over the kept entries along `axis`, with kept dims."""
    if keep is None:
        return ops.max(x, axis=axis, keepdims=True)
    # The slice minimum stands in for masked entries: it cannot exceed the
    # kept maximum, and unlike -inf it keeps every later difference finite.
    floor = ops.min(x, axis=axis, keepdims=True)
    return ops.max(ops.where(keep, x, floor), axis=axis, keepdims=True)


def relative_to_max(x: Tensor, keep: Tensor | None, axis: int, floor: float) -> Tensor:
    """`x` minus its kept maximum, clipped below at `floor`; masked at `floor`.

    The sparse maps give zero weight to every entry more than a fixed distance
    below the maximum, so clipping those entries changes no weight but keeps
    the sorted sums that find the threshold small and well conditioned.
    """
    shifted = ops.maximum(x - kept_max(x, keep, axis), floor)
    if keep is None:
        return shifted
    return ops.where(keep, shifted, floor)


def masked_softmax(
    x: Tensor, keep: Tensor | None, axis: int, temperature: float = 1.0
) -> Tensor:
    """Softmax of float32 `x / temperature` along `axis`; masked entries get 0."""
    shift = ops.stop_gradient(kept_max(x, keep, axis))
    # The maximum is subtracted before dividing by the temperature: near-equal
    # large logits then differ exactly, where their quotients would not.
    if keep is None:
        exponentials = ops.exp((x - shift) / temperature)
    else:
        # Masked logits are replaced before `exp`, so that neither their value
        # nor their gradient can overflow.
        shifted = ops.where(keep, x, shift) - shift
        exponentials = ops.where(keep, ops.exp(shifted / temperature), 0.0)
    # The kept maximum contributes exp(0) = 1, so the sum is at least 1.
    return exponentials / ops.sum(exponentials, axis=axis, keepdims=True)


def one_hot_argmax(x: Tensor, keep: Tensor | None, axis: int) -> Tensor:
    """A float32 one-hot tensor marking the first kept maximum of `x` along `axis`."""
    # JAX and TensorFlow rank -0.0 below +0.0 in `argmax`; making every zero
    # +0.0 lets equal entries break ties by position on every backend.
    x = ops.where(ops.equal(x, 0.0), 0.0, x)
    if keep is not None:
        # -inf is safe here, unlike in sums and sorts: `argmax` only compares,
        # and a masked entry can then never tie with a kept one.
        x = ops.where(keep, x, float("-inf"))
    index = ops.cast(ops.argmax(x, axis=axis, keepdims=True), "int32")
    # Positions are counted with `cumsum` rather than `one_hot`, which would need
    # the length of `axis` to be known statically.
    position = ops.cast(ops.cumsum(ops.ones_like(x, dtype="int32"), axis=axis), "int32")
    one_hot = ops.cast(ops.equal(position - 1, index), "float32")
    # `argmax` picks some entry of a NaN slice; the slice stays NaN instead.
    invalid = ops.any(ops.isnan(x), axis=axis, keepdims=True)
    return ops.where(invalid, float("nan"), one_hot)


def sort_descending(x: Tensor, axis: int) -> Tensor:
    """`x` sorted from largest to smallest along `axis`."""
    return -ops.sort(-x, axis=axis)


def gradient_surrogate(logits: Tensor, scale: Tensor, axis: int) -> Tensor:
    """A zero tensor whose Jacobian with respect to `logits` is analytic.

    With a constant, non-negative `scale` s (not all zero along `axis`), the
    Jacobian of the returned tensor is `diag(s) - s s^T / sum(s)`: the exact
    Jacobian of sparsemax (s the support indicator) and of 1.5-entmax (s the
    square root of the weights). Adding it to weights computed under
    `stop_gradient` gives them their exact gradient without a custom gradient,
    and without the undefined derivatives of sorting at ties.
    """
    scale = ops.stop_gradient(scale)
    # Logits outside the support are zeroed first: an infinite logit there
    # would otherwise turn `scale * logits` into 0 * inf = NaN.
    scaled = scale * ops.where(scale > 0, logits, 0.0)
    centered = scaled - scale * (
        ops.sum(scaled, axis=axis, keepdims=True)
        / ops.sum(scale, axis=axis, keepdims=True)
    )
    return centered - ops.stop_gradient(centered)
