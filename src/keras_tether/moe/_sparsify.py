"""`sparsify`: keras-hub's MoE blocks computing only the chosen experts.

keras-hub's MoE blocks compute every expert on every token (an einsum over
the expert bank) and then weight the results by the routing, most of them
zero. `sparsify` gives each block a call that routes exactly as the block
does, on the block's own layers and variables, and computes each token's
chosen experts with the dropless tiled product of `MixtureOfExperts`.

keras-hub is imported only when `sparsify` runs. The blocks are recognized
by their exact classes, which keras-hub defines in its (private)
`keras_hub.src.models` modules; the routers and expert kernels are read
from the blocks' private attributes, as no public accessor exists.
"""

from __future__ import annotations

import importlib
import re
import types
import warnings
from collections.abc import Callable
from typing import Any

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
    Mixtral (`MixtralSparseMoeBlock`), Qwen-MoE (`QwenSparseMoeBlock`) and
    Qwen3.5-MoE (`Qwen3_5MoeSparseMoeBlock`). Any other layer whose class
    name ends in `MoeBlock` (GPT-OSS, Gemma 4) is left as it is and named
    in a warning, and so is a supported block that lacks an attribute its
    sparse call reads (a block not built yet, or a keras-hub release that
    renamed it). Calling `sparsify` again converts nothing twice.

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
        `["qwen3_moe_backbone/transformer_layer_0/sparse_block
        (Qwen3SparseMoeBlock)"]`.

    Raises:
        ImportError: if keras-hub is not installed.
        TypeError: if `model` is not a Keras layer.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Expected `model` to be a Keras model or layer. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    converters = _converters()
    converted: list[str] = []
    skipped: list[str] = []
    for layer in _nested_layers(model):
        name = f"{layer.path} ({type(layer).__name__})"
        if getattr(layer, _MARK, None) is not None:
            continue
        converter = converters.get(type(layer))
        if converter is not None and _has_attributes(layer, converter[1]):
            _convert(layer, converter[0])
            converted.append(name)
        elif converter is not None or _MOE_BLOCK_NAME.search(type(layer).__name__):
            skipped.append(name)
    if skipped:
        warnings.warn(
            "`sparsify` left these mixture-of-experts blocks computing every "
            f"expert (their structure is not supported): {', '.join(skipped)}",
            stacklevel=2,
        )
    return converted


def _nested_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer inside `model`, nested in custom layers included."""
    return all_layers(model, include_self=True)


def _has_attributes(block: Any, paths: tuple[str, ...]) -> bool:
    """Whether the block has what its sparse call reads (keras-hub may rename)."""
    for path in ("hidden_dim", "num_experts", "top_k", *paths):
        value = block
        for name in path.split("."):
            value = getattr(value, name, None)
        if value is None:
            return False
    return True


def _convert(block: keras.layers.Layer, sparse_call: Callable) -> None:
    dense_call = type(block).call

    def call(self, hidden_states, attention_mask=None, training=None):
        if None in tuple(hidden_states.shape):
            return dense_call(self, hidden_states, attention_mask, training)
        return sparse_call(self, hidden_states, attention_mask, training)

    object.__setattr__(block, _MARK, dense_call)
    object.__setattr__(block, "call", types.MethodType(call, block))


def _converters() -> dict[type, Callable]:
    try:
        importlib.import_module("keras_hub")
    except ImportError as error:
        raise ImportError(
            "`keras_tether.moe.sparsify` converts keras-hub models and needs "
            "keras-hub: `pip install keras-hub`."
        ) from error
    fused = ("expert_bank._expert_feedforward_gate_dense",)
    output = ("expert_bank._expert_feedforward_output_dense",)
    router = ("_sparse_feedforward_gate_dense",)
    families = {
        "qwen3_moe.qwen3_moe_decoder.Qwen3SparseMoeBlock": (
            _qwen3_call,
            router + fused + output + ("expert_bank.activation", "norm_top_k_prob"),
        ),
        "mixtral.mixtral_decoder.MixtralSparseMoeBlock": (
            _mixtral_call,
            router
            + fused
            + output
            + (
                "expert_bank._expert_feedforward_intermediate_dense",
                "expert_bank.activation",
                "router_jitter_noise",
                "router_aux_loss_coef",
            ),
        ),
        "qwen_moe.qwen_moe_decoder.QwenSparseMoeBlock": (
            _qwen_call,
            router
            + fused
            + output
            + (
                "expert_bank.activation",
                "shared_expert_dense",
                "shared_expert_gate_dense",
                "norm_top_k_prob",
            ),
        ),
        "qwen3_5_moe.qwen3_5_moe_decoder.Qwen3_5MoeSparseMoeBlock": (
            _qwen3_5_call,
            fused + output + ("_router_gate", "shared_expert", "_shared_expert_gate"),
        ),
    }
    converters = {}
    for path, call in families.items():
        module_name, class_name = path.rsplit(".", 1)
        try:
            module = importlib.import_module(f"keras_hub.src.models.{module_name}")
        except ImportError:  # a keras-hub without this family
            continue
        block_class = getattr(module, class_name, None)
        if block_class is not None:
            converters[block_class] = call
    return converters


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
    assignments = sort_assignments(
        top_i, ops.ones_like(top_i, dtype="bool"), block.num_experts
    )
    padded = ops.take(routed_input, assignments.slot_tokens, axis=0)
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


def _qwen3_call(block, hidden_states, attention_mask, training):
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


def _qwen_call(block, hidden_states, attention_mask, training):
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


def _qwen3_5_call(block, hidden_states, attention_mask, training):
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


def _mixtral_call(block, hidden_states, attention_mask, training):
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
