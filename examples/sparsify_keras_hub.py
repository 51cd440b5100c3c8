"""Make a keras-hub Qwen3-MoE model compute only each token's chosen experts.

Install: pip install "keras-tether[BACKEND,hub]"

Needs keras-hub, the `hub` extra. Builds a small, randomly
initialized Qwen3-MoE causal language model (no download), generates greedily,
converts its MoE blocks in place with `keras_tether.moe.sparsify`, and checks
that the outputs and the generated tokens are unchanged. With a preset,
`keras_hub.models.Qwen3MoeCausalLM.from_preset(...)` replaces the constructor
and nothing else changes.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import keras_tether  # noqa: F401  (chooses an installed backend if none is named)
from keras_tether.moe import sparsify


def build_causal_lm(num_experts: int = 8, top_k: int = 2) -> keras.Model:
    """A small Qwen3-MoE causal LM with random weights."""
    import keras_hub

    backbone = keras_hub.models.Qwen3MoeBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        moe_intermediate_dim=16,
        num_experts=num_experts,
        top_k=top_k,
        head_dim=8,
        norm_top_k_prob=True,
    )
    return keras_hub.models.Qwen3MoeCausalLM(backbone=backbone)


def main(num_experts: int = 8, top_k: int = 2, seed: int = 0) -> tuple:
    """Returns the converted blocks and the largest output difference."""
    keras.utils.set_random_seed(seed)
    causal_lm = build_causal_lm(num_experts, top_k)
    causal_lm.compile(sampler="greedy")
    prompt = {
        "token_ids": np.array([[7, 21, 3, 0, 0, 0, 0, 0, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], "bool"),
    }
    before = keras.ops.convert_to_numpy(causal_lm.backbone(prompt))
    tokens_before = causal_lm.generate(prompt, stop_token_ids=None)["token_ids"]
    converted = sparsify(causal_lm)
    after = keras.ops.convert_to_numpy(causal_lm.backbone(prompt))
    tokens_after = causal_lm.generate(prompt, stop_token_ids=None)["token_ids"]
    if not np.array_equal(tokens_before, tokens_after):
        raise AssertionError("greedy generation changed after sparsify")
    return converted, float(np.abs(after - before).max()), tokens_after


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()
    converted, difference, tokens = main(args.num_experts, args.top_k)
    print("converted:")
    for entry in converted:
        print(f"  {entry}")
    print(f"largest change of the backbone's outputs: {difference:.2e}")
    print(f"greedy tokens (unchanged): {tokens[0].tolist()}")
