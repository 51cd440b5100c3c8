"""`sparsify`: keras-hub's MoE blocks computing only the chosen experts.

keras-hub's MoE blocks compute every expert on every token (an einsum over
the expert bank) and then weight the results by the routing, most of them
zero. `sparsify` gives each block a call that routes exactly as the block
does, on the block's own layers and variables, and computes each token's
chosen experts with the dropless tiled product of `MixtureOfExperts`.

keras-hub is imported only when `sparsify` runs. The blocks are recognized
by their exact classes, which keras-hub defines in its (private)
`keras_hub.src.models` modules; the routers and expert kernels are read
from the blocks' attributes (some private, as `_sparse_feedforward_gate_dense`),
as no public accessor exists.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import types
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
from keras import ops

from keras_tether._walk import all_layers
from keras_tether.ops._dropless import combine, sort_assignments
from keras_tether.ops._grouped_matmul import tiled_product

# A layer whose class name ends so is a mixture-of-experts block: any such
# block left dense is named in a warning.
_MOE_BLOCK_NAME = re.compile(r"mo[e]block$", re.IGNORECASE)

# Marks a converted block (the value is its class's own `call`).
_MARK = "_keras_tether_dense_call"


def sparsify(model: keras.layers.Layer) -> list[str]:
    """Makes every keras-hub MoE block in `model` compute only chosen experts.

    keras-hub's mixture-of-experts blocks compute every expert on every
    token and multiply most results by a zero routing weight: `num_experts
    / top_k` times the work needed (4x for Mixtral, 16x for a Qwen3-MoE
    with 128 experts and top-8). `sparsify` converts each block in place:
    the block keeps its router, its expert bank and their variables (so
    presets and checkpoints load as before, and `model.weights` is
    unchanged), and gets a call that routes exactly as before and computes
    each token's top-k experts only, with the dropless tiled product of
    `MixtureOfExperts(dispatch="dropless")`. The outputs are those of the
    unconverted model up to float rounding; the auxiliary losses are the
    block's own.

    Converted: the sparse MoE blocks of Qwen3-MoE (`Qwen3SparseMoeBlock`),
    Mixtral (`MixtralSparseMoeBlock`), Qwen-MoE (`QwenSparseMoeBlock`),
    Qwen3.5-MoE (`Qwen3_5MoeSparseMoeBlock`) and GPT-OSS
    (`GptOssSparseMoeBlock`: top-k of the router logits, softmax over the
    k chosen, each expert's kernel biases added to its own assignments, the
    clamped gated unit with the block's `alpha` and `limit`), and Gemma 4's
    expert bank (`Gemma4MoEBlock`: gated GELU experts, each scaled by its
    `per_expert_scale`). Gemma 4's decoder block routes the tokens itself
    and hands its bank a dense `(tokens, experts)` matrix of weights, at
    most `num_experts_per_token` of them non-zero per token; the bank is
    converted when the `Gemma4TextDecoderBlock` holding it is in `model`,
    which gives that number, and the decoder block's dense MLP beside the
    bank is unchanged.

    Any other layer whose class name ends in `MoeBlock` is left as it is
    and named in a warning, and so is a supported block that lacks an
    attribute its sparse call reads (a block not built yet, or a keras-hub
    release that renamed it), and a Gemma 4 bank whose decoder block is not
    in `model`. Calling `sparsify` again converts nothing twice.

    Functions `model` traced before the conversion (`fit`, `evaluate`,
    `predict`, a `CausalLM`'s `generate`) are traced again on their next
    call; a model holding `model` keeps its own: call `sparsify` on the
    outermost model, or `compile` that model again.

    The conversion is of the Python objects, not of the saved model: a
    `.keras` file or a preset holds the keras-hub model as it was, and
    loads (without keras-tether) as the dense model. Call `sparsify` again
    on the loaded model.

    A block called on a token count unknown while tracing (no static
    shape) falls back to its own dense computation, the same function.

    Args:
        model: A Keras model or layer containing keras-hub MoE blocks
            (a backbone, a `CausalLM`, or a model wrapping them).

    Returns:
        The paths of the converted blocks, with their classes, e.g.
        `["transformer_layer_0/sparse_moe_block (GptOssSparseMoeBlock)"]`.

    Raises:
        ImportError: if keras-hub is not installed.
        TypeError: if `model` is not a Keras layer.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Expected `model` to be a Keras model or layer. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    families = _families()
    layers = _nested_layers(model)
    experts_per_token = _gemma4_experts_per_token(layers)
    converted: list[str] = []
    skipped: list[str] = []
    for layer in layers:
        name = f"{layer.path} ({type(layer).__name__})"
        if getattr(layer, _MARK, None) is not None:
            continue
        family = families.get(type(layer))
        sparse_call = None
        if family is not None and _has_attributes(layer, family.attributes):
            sparse_call = family.sparse_call
            if family.top_k_from_router:
                top_k = experts_per_token.get(id(layer))
                if top_k is None:
                    sparse_call = None
                else:
                    sparse_call = functools.partial(sparse_call, top_k=top_k)
        if sparse_call is not None:
            _convert(layer, sparse_call)
            converted.append(name)
        elif family is not None or _MOE_BLOCK_NAME.search(type(layer).__name__):
            skipped.append(name)
    if converted:
        _forget_traced_functions(layers)
    if skipped:
        warnings.warn(
            "`sparsify` left these mixture-of-experts blocks computing every "
            f"expert (their structure is not supported): {', '.join(skipped)}",
            stacklevel=2,
        )
    return converted


# What a Keras model (and a keras-hub `CausalLM`) keeps once traced, with the
# blocks' dense calls in it: each is rebuilt on the next call when None, as
# `compile` leaves it.
_TRACED_FUNCTIONS = (
    "train_function",
    "test_function",
    "predict_function",
    "generate_function",
)


def _forget_traced_functions(layers: list[keras.layers.Layer]) -> None:
    """Makes `fit`, `predict` and `generate` trace the converted blocks anew."""
    for layer in layers:
        if isinstance(layer, keras.Model):
            for name in _TRACED_FUNCTIONS:
                if getattr(layer, name, None) is not None:
                    setattr(layer, name, None)


def _nested_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer inside `model`, nested in custom layers included."""
    return all_layers(model, include_self=True)


def _has_attributes(block: Any, paths: tuple[str, ...]) -> bool:
    """Whether the block has what its sparse call reads (keras-hub may rename)."""
    for path in paths:
        value = block
        for name in path.split("."):
            value = getattr(value, name, None)
        if value is None:
            return False
    return True


def _convert(block: keras.layers.Layer, sparse_call: Callable) -> None:
    dense_call = type(block).call
    signature = inspect.signature(dense_call)
    first = list(signature.parameters)[1]

    # Same arguments as the block's own call, which Keras inspected when the
    # block was made (to pass `training`, masks).
    def call(self, *args, **kwargs):
        inputs = signature.bind(self, *args, **kwargs).arguments[first]
        if None in tuple(inputs.shape):
            return dense_call(self, *args, **kwargs)
        return sparse_call(self, *args, **kwargs)

    object.__setattr__(block, _MARK, dense_call)
    object.__setattr__(block, "call", types.MethodType(call, block))


class _Family(NamedTuple):
    """How one keras-hub block class is made sparse."""

    sparse_call: Callable
    attributes: tuple[str, ...]
    """What the sparse call reads on the block."""
    top_k_from_router: bool = False
    """Whether the number of experts per token is held not by the block but
    by the layer routing to it (a block no such layer routes to stays
    dense)."""


def _families() -> dict[type, _Family]:
    try:
        importlib.import_module("keras_hub")
    except ImportError as error:
        raise ImportError(
            "`keras_tether.moe.sparsify` converts keras-hub models and needs "
            "keras-hub: `pip install keras-hub`."
        ) from error
    sizes = ("hidden_dim", "num_experts", "top_k")
    fused = ("expert_bank._expert_feedforward_gate_dense",)
    output = ("expert_bank._expert_feedforward_output_dense",)
    router = ("_sparse_feedforward_gate_dense",)
    families = {
        "qwen3_moe.qwen3_moe_decoder.Qwen3SparseMoeBlock": _Family(
            _qwen3_call,
            sizes
            + router
            + fused
            + output
            + ("expert_bank.activation", "norm_top_k_prob"),
        ),
        "mixtral.mixtral_decoder.MixtralSparseMoeBlock": _Family(
            _mixtral_call,
            sizes
            + router
            + fused
            + output
            + (
                "expert_bank._expert_feedforward_intermediate_dense",
                "expert_bank.activation",
                "router_jitter_noise",
                "router_aux_loss_coef",
            ),
        ),
        "qwen_moe.qwen_moe_decoder.QwenSparseMoeBlock": _Family(
            _qwen_call,
            sizes
            + router
            + fused
            + output
            + (
                "expert_bank.activation",
                "shared_expert_dense",
                "shared_expert_gate_dense",
                "norm_top_k_prob",
            ),
        ),
        "qwen3_5_moe.qwen3_5_moe_decoder.Qwen3_5MoeSparseMoeBlock": _Family(
            _qwen3_5_call,
            sizes
            + fused
            + output
            + ("_router_gate", "shared_expert", "_shared_expert_gate"),
        ),
        "gpt_oss.gpt_oss_decoder.GptOssSparseMoeBlock": _Family(
            _gpt_oss_call,
            (
                "hidden_dim",
                "router.router_dense",
                "router.top_k",
                "router.num_experts",
                "experts.num_experts",
                "experts.gate_up_proj",
                "experts.gate_up_proj_bias",
                "experts.down_proj",
                "experts.down_proj_bias",
                "experts.alpha",
                "experts.limit",
            ),
        ),
        "gemma4.gemma4_moe.Gemma4MoEBlock": _Family(
            _gemma4_call,
            ("num_experts", "gate_proj", "up_proj", "down_proj", "per_expert_scale"),
            top_k_from_router=True,
        ),
    }
    converters = {}
    for path, family in families.items():
        block_class = _keras_hub_class(path)
        if block_class is not None:
            converters[block_class] = family
    return converters


def _keras_hub_class(path: str) -> type | None:
    """A class of `keras_hub.src.models`, or None if this keras-hub lacks it."""
    module_name, class_name = path.rsplit(".", 1)
    try:
        module = importlib.import_module(f"keras_hub.src.models.{module_name}")
    except ImportError:  # a keras-hub without this family
        return None
    return getattr(module, class_name, None)


# Gemma 4's decoder block routes the tokens (`moe_router`, which knows how
# many experts each token takes) and hands the expert bank (`moe_expert_bank`)
# a dense `(tokens, experts)` matrix of routing weights.
_GEMMA4_DECODER = "gemma4.gemma4_decoder_block.Gemma4TextDecoderBlock"


def _gemma4_experts_per_token(layers: list[keras.layers.Layer]) -> dict[int, int]:
    """`id(bank) -> top_k` for each Gemma 4 expert bank routed in `layers`.

    The bank receives at most `top_k` non-zero weights per token from the
    router of the decoder block holding it; only that block knows `top_k`.
    """
    decoder_class = _keras_hub_class(_GEMMA4_DECODER)
    found = {}
    for layer in layers:
        if decoder_class is None or type(layer) is not decoder_class:
            continue
        bank = getattr(layer, "moe_expert_bank", None)
        router = getattr(layer, "moe_router", None)
        top_k = getattr(router, "num_experts_per_token", None)
        if getattr(layer, "enable_moe_block", False) and bank is not None and top_k:
            found[id(bank)] = int(top_k)
    return found


def _block_call(
    block: Any,
    hidden_states: Any,
    attention_mask: Any,
    training: Any,
    *,
    router: Any,
    normalize: bool,
    hidden: Callable,
    output_kernel: Any,
    aux_coefficient: float,
    jitter: float = 0.0,
    shared: Callable | None = None,
) -> tuple[Any, Any]:
    """The call of a keras-hub sparse MoE block, chosen experts only.

    Routes as the blocks do (softmax, top-k, optionally renormalized, the
    weights cast to the compute dtype), adds the block's load-balancing loss
    in training, and returns `(outputs, router_logits)` as they do.
    """
    batch, length, _ = ops.shape(hidden_states)
    flat = ops.reshape(hidden_states, (-1, block.hidden_dim))
    routed_input = flat
    if training and jitter > 0:
        routed_input = flat * keras.random.uniform(
            ops.shape(flat), minval=1.0 - jitter, maxval=1.0 + jitter, dtype=flat.dtype
        )
    shared_output = None if shared is None else shared(flat)
    router_logits = router(routed_input)
    probabilities = ops.softmax(router_logits, axis=-1)
    top_p, top_i = ops.top_k(probabilities, k=block.top_k)
    if normalize:
        top_p = top_p / ops.sum(top_p, axis=-1, keepdims=True)
    top_p = ops.cast(top_p, flat.dtype)
    assignments, padded = _chosen_rows(routed_input, top_i, block.num_experts)
    results = tiled_product(
        hidden(padded, assignments.layout), output_kernel, assignments.layout
    )
    out = combine(results, assignments, top_p)
    if shared_output is not None:
        out = out + shared_output
    out = ops.reshape(out, (batch, length, block.hidden_dim))
    if training:
        loss = importlib.import_module(
            type(block).__module__
        ).compute_load_balancing_loss(
            router_logits=router_logits,
            num_experts=block.num_experts,
            top_k=block.top_k,
            attention_mask=attention_mask,
        )
        block.add_loss(aux_coefficient * loss)
    return out, router_logits


def _chosen_rows(rows: Any, top_i: Any, num_experts: int) -> tuple[Any, Any]:
    """Every token's chosen experts sorted into tiles, and the rows they read."""
    assignments = sort_assignments(
        top_i, ops.ones_like(top_i, dtype="bool"), num_experts
    )
    return assignments, ops.take(rows, assignments.slot_tokens, axis=0)


def _gate_up(bank: Any, activation: Callable, float32_activation: bool) -> Callable:
    """Qwen's experts: one `(E, d, 2h)` kernel, the gate half first."""

    def hidden(padded, layout):
        gate_up = tiled_product(padded, bank._expert_feedforward_gate_dense, layout)
        gate, up = ops.split(gate_up, 2, axis=-1)
        if float32_activation:
            gate = ops.cast(activation(ops.cast(gate, "float32")), up.dtype)
        else:
            gate = activation(gate)
        return up * gate

    return hidden


def _gate_and_up(bank: Any) -> Callable:
    """Mixtral's experts: separate gate and up kernels, SiLU in float32."""

    def hidden(padded, layout):
        gate = tiled_product(padded, bank._expert_feedforward_gate_dense, layout)
        gate = ops.cast(bank.activation(ops.cast(gate, "float32")), gate.dtype)
        up = tiled_product(padded, bank._expert_feedforward_intermediate_dense, layout)
        return up * gate

    return hidden


def _qwen3_call(block, hidden_states, attention_mask=None, training=None):
    bank = block.expert_bank
    return _block_call(
        block,
        hidden_states,
        attention_mask,
        training,
        router=block._sparse_feedforward_gate_dense,
        normalize=block.norm_top_k_prob,
        hidden=_gate_up(bank, bank.activation, float32_activation=False),
        output_kernel=bank._expert_feedforward_output_dense,
        aux_coefficient=block.router_aux_loss_coefficient,
    )


def _qwen_call(block, hidden_states, attention_mask=None, training=None):
    bank = block.expert_bank

    def shared(flat):
        gate = ops.sigmoid(block.shared_expert_gate_dense(flat))
        return block.shared_expert_dense(flat) * gate

    return _block_call(
        block,
        hidden_states,
        attention_mask,
        training,
        router=block._sparse_feedforward_gate_dense,
        normalize=block.norm_top_k_prob,
        hidden=_gate_up(bank, bank.activation, float32_activation=False),
        output_kernel=bank._expert_feedforward_output_dense,
        aux_coefficient=block.router_aux_loss_coefficient,
        shared=shared,
    )


def _qwen3_5_call(block, hidden_states, attention_mask=None, training=None):
    bank = block.expert_bank

    def shared(flat):
        gate = ops.sigmoid(block._shared_expert_gate(flat))
        return gate * block.shared_expert(flat)

    return _block_call(
        block,
        hidden_states,
        attention_mask,
        training,
        router=block._router_gate,
        normalize=True,
        hidden=_gate_up(bank, ops.silu, float32_activation=True),
        output_kernel=bank._expert_feedforward_output_dense,
        aux_coefficient=block.router_aux_loss_coefficient,
        shared=shared,
    )


def _mixtral_call(block, hidden_states, attention_mask=None, training=False):
    bank = block.expert_bank
    return _block_call(
        block,
        hidden_states,
        attention_mask,
        training,
        router=block._sparse_feedforward_gate_dense,
        normalize=True,
        hidden=_gate_and_up(bank),
        output_kernel=bank._expert_feedforward_output_dense,
        aux_coefficient=block.router_aux_loss_coef,
        jitter=block.router_jitter_noise,
    )


def _gpt_oss_call(block, hidden_states):
    # The router's top-k is taken on the logits and the softmax over the k
    # chosen logits only; each expert adds its biases and applies the
    # clamped gated unit `(clip(up) + 1) * clip(gate) * sigmoid(alpha *
    # clip(gate))` to its interleaved gate and up columns.
    batch, length, _ = ops.shape(hidden_states)
    flat = ops.reshape(hidden_states, (-1, block.hidden_dim))
    router = block.router
    router_logits = router.router_dense(flat)
    top_logits, top_i = ops.top_k(router_logits, k=router.top_k)
    top_p = ops.softmax(top_logits, axis=-1)
    one_hot = ops.cast(ops.one_hot(top_i, router.num_experts), top_p.dtype)
    router_scores = ops.sum(one_hot * top_p[..., None], axis=1)
    experts = block.experts
    assignments, padded = _chosen_rows(flat, top_i, experts.num_experts)
    layout = assignments.layout
    gate_up = tiled_product(
        padded, experts.gate_up_proj, layout, bias=experts.gate_up_proj_bias
    )
    gate = ops.clip(gate_up[:, ::2], -1e9, experts.limit)
    up = ops.clip(gate_up[:, 1::2], -experts.limit, experts.limit)
    hidden = (up + 1) * (gate * ops.sigmoid(gate * experts.alpha))
    results = tiled_product(
        hidden, experts.down_proj, layout, bias=experts.down_proj_bias
    )
    out = combine(results, assignments, top_p)
    return ops.reshape(out, (batch, length, block.hidden_dim)), router_scores


def _gemma4_call(bank, x, dispatch_weights, *, top_k):
    # The router gave each token at most `top_k` non-zero weights: the top
    # `top_k` of its row are all of them (a zero weight picked in place of
    # a missing one adds nothing, as in the dense sum).
    dtype = x.dtype
    _, top_i = ops.top_k(dispatch_weights, k=top_k)
    top_p = ops.take_along_axis(ops.cast(dispatch_weights, dtype), top_i, axis=-1)
    assignments, padded = _chosen_rows(x, top_i, bank.num_experts)
    layout = assignments.layout
    gate = tiled_product(padded, ops.cast(bank.gate_proj, dtype), layout)
    up = tiled_product(padded, ops.cast(bank.up_proj, dtype), layout)
    gate = ops.cast(
        keras.activations.gelu(ops.cast(gate, "float32"), approximate=True), dtype
    )
    results = tiled_product(gate * up, ops.cast(bank.down_proj, dtype), layout)
    # Each expert's output scale, applied per tile (a tile holds one expert).
    scale = ops.take(ops.cast(bank.per_expert_scale, dtype), layout.tile_groups, axis=0)
    width = results.shape[-1]
    results = ops.reshape(results, (layout.tiles, layout.tile, width))
    results = ops.reshape(results * scale[:, None, None], (-1, width))
    return combine(results, assignments, top_p)
