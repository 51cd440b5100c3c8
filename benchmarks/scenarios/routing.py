"""Routing scenarios: dispatches, keras-hub's MoE blocks, gated mixtures."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from benchmarks import child_environment
from benchmarks.scenarios import Comparison, Context
from benchmarks.scenarios._data import random, seed_data, tensors
from benchmarks.scenarios._first_fit import _peak_bytes
from benchmarks.schema import make_row
from benchmarks.timing import Candidate, train_step
from keras_tether.layers import GatedAverage, MixtureOfExperts, WeightedAverage

# Largest ratio sparse / dense at 16 experts that meets the target (2x faster).
SPARSE_TARGET = 0.5
TARGET_EXPERTS = 16


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of the routing scenarios."""

    experts: tuple[int, ...]
    top_k: int
    capacity_factor: float
    batch: int
    tokens: int
    features: int
    hidden: int
    seed_branches: int
    seed_batch: int
    seed_features: int
    seed_hidden: int
    seed_classes: int


FULL = Sizes(
    experts=(8, 16, 32),
    top_k=2,
    capacity_factor=1.25,
    batch=16,
    tokens=64,
    features=64,
    hidden=256,
    seed_branches=3,
    seed_batch=1000,
    seed_features=100,
    seed_hidden=32,
    seed_classes=10,
)

QUICK = Sizes(
    experts=(16,),
    top_k=2,
    capacity_factor=1.25,
    batch=2,
    tokens=8,
    features=8,
    hidden=8,
    seed_branches=3,
    seed_batch=16,
    seed_features=8,
    seed_hidden=8,
    seed_classes=8,
)


def _sizes(context: Context) -> Sizes:
    return QUICK if context.quick else FULL


def _expert_flops(sizes: Sizes, experts: int, dispatch: str) -> int:
    """Forward multiply-adds x 2 of the experts and of the dispatch einsums."""
    per_token = 2 * 2 * sizes.features * sizes.hidden  # two projections
    groups = sizes.batch
    if dispatch == "dense":
        return groups * sizes.tokens * experts * per_token
    share = sizes.capacity_factor * sizes.tokens * sizes.top_k / experts
    capacity = min(sizes.tokens, max(1, math.ceil(share)))
    slots = groups * experts * capacity
    # Dispatch and combine: (tokens, experts, capacity) x features, twice.
    moves = 2 * 2 * groups * sizes.tokens * experts * capacity * sizes.features
    return slots * per_token + moves


def mixture_of_experts(context: Context) -> Comparison:
    """A token model with one mixture-of-experts layer, sparse vs dense dispatch."""
    sizes = _sizes(context)
    rng = np.random.default_rng(2)
    shape = (sizes.batch, sizes.tokens, sizes.features)
    x, y = tensors([random(shape, rng), random(shape, rng)])
    candidates = []
    for experts in sizes.experts:
        for dispatch in ("sparse", "dense"):
            tokens = keras.Input(shape=shape[1:])
            moe = MixtureOfExperts(
                num_experts=experts,
                hidden_units=sizes.hidden,
                top_k=sizes.top_k,
                capacity_factor=sizes.capacity_factor,
                dispatch=dispatch,
                residual=True,
            )
            model = keras.Model(tokens, moe(tokens), name=f"{dispatch}_{experts}")
            model.compile(optimizer="adam", loss="mse")
            key = f"{dispatch}_{experts}"
            label = f"MixtureOfExperts E={experts} {dispatch}"
            candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "mixture of experts",
            timing,
            f"sparse_{experts}",
            f"dense_{experts}",
            baseline_kind="every-expert",
            target=SPARSE_TARGET if experts == TARGET_EXPERTS else None,
        )
        for experts in sizes.experts
    ]
    details: dict[str, Any] = {
        "name": "mixture of experts",
        "description": (
            "training step (adam, mse) of Input(tokens, features) -> "
            f"MixtureOfExperts(top_k={sizes.top_k}, capacity_factor="
            f"{sizes.capacity_factor}, residual=True), sparse against dense "
            "dispatch; flops are the forward experts' and dispatch einsums'"
        ),
        "batch_size": sizes.batch,
        "tokens": sizes.tokens,
        "features": sizes.features,
        "hidden_units": sizes.hidden,
        "forward_flops": {
            f"{dispatch}_{experts}": _expert_flops(sizes, experts, dispatch)
            for experts in sizes.experts
            for dispatch in ("sparse", "dense")
        },
        **timing,
    }
    return Comparison(details, rows)


def gated_seed(context: Context) -> Comparison:
    """The seed's parallel MLPs mixed per example against one mixture."""
    sizes = _sizes(context)
    rng = np.random.default_rng(3)
    x, y = seed_data(
        sizes.seed_batch,
        sizes.seed_features,
        sizes.seed_branches,
        sizes.seed_classes,
        rng,
    )
    candidates = []
    for key, label in (
        ("gated_average", "GatedAverage"),
        ("weighted_average", "WeightedAverage"),
    ):
        inputs = [
            keras.Input(shape=(sizes.seed_features,))
            for _ in range(sizes.seed_branches)
        ]
        branches = [
            keras.layers.Dense(sizes.seed_classes)(
                keras.layers.Dense(sizes.seed_hidden, activation="relu")(branch)
            )
            for branch in inputs
        ]
        if key == "gated_average":
            mixed = GatedAverage()([inputs[0], branches])
        else:
            mixed = WeightedAverage()(branches)
        model = keras.Model(inputs, mixed, name=key)
        model.compile(
            optimizer="adam",
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        )
        candidates.append(Candidate(key, label, model, train_step(model, x, y)))
    timing = context.time(candidates)
    rows = [
        make_row(
            "gated seed scenario",
            timing,
            "gated_average",
            "weighted_average",
            baseline_kind="fixed-mixture",
            target=None,
        )
    ]
    details = {
        "name": "gated seed scenario",
        "description": (
            f"{sizes.seed_branches} parallel MLPs (Input({sizes.seed_features}) "
            f"-> Dense({sizes.seed_hidden}, relu) -> Dense({sizes.seed_classes})) "
            "mixed per example by GatedAverage (routed from the first input) "
            "or by one WeightedAverage; training step, adam, cross-entropy"
        ),
        "batch_size": sizes.seed_batch,
        **timing,
    }
    return Comparison(details, rows)


@dataclass(frozen=True)
class ExpertSizes:
    """The problem sizes of the keras-hub comparisons."""

    # (num_experts, top_k) pairs and the training-step target of each.
    pairs: tuple[tuple[int, int, float], ...]
    batch: int
    tokens: int
    width: int
    hidden: int
    backbone_layers: int
    backbone_heads: int


EXPERTS_FULL = ExpertSizes(
    pairs=((8, 2, 1.0), (32, 2, 0.25), (128, 8, 0.35)),
    batch=8,
    tokens=256,
    width=256,
    hidden=256,
    backbone_layers=2,
    backbone_heads=4,
)

EXPERTS_QUICK = ExpertSizes(
    pairs=((4, 2, 1.0),),
    batch=2,
    tokens=8,
    width=8,
    hidden=8,
    backbone_layers=1,
    backbone_heads=2,
)

# The sparsified backbone's forward against the original's, at 32 experts.
BACKBONE_TARGET = 0.6
BACKBONE_EXPERTS = (32, 2)


def _short(context: Context) -> Context:
    """The context with at most 7 rounds: keras-hub's 128-expert step is slow."""
    budget = dataclasses.replace(
        context.budget,
        rounds=min(context.budget.rounds, 7),
        warmup=min(context.budget.warmup, 2),
    )
    return dataclasses.replace(context, budget=budget)


def _qwen3_block_model(sizes: ExpertSizes, experts: int, top_k: int) -> Any:
    from keras_hub.src.models.qwen3_moe.qwen3_moe_decoder import Qwen3SparseMoeBlock

    tokens = keras.Input((sizes.tokens, sizes.width), batch_size=sizes.batch)
    block = Qwen3SparseMoeBlock(
        hidden_dim=sizes.width,
        moe_intermediate_dim=sizes.hidden,
        num_experts=experts,
        top_k=top_k,
        norm_top_k_prob=True,
    )
    outputs, _ = block(tokens)
    return keras.Model(tokens, outputs, name=f"keras_hub_{experts}"), block


def _ours_on_the_same_weights(
    sizes: ExpertSizes, experts: int, top_k: int, dispatch: str, block: Any
) -> Any:
    tokens = keras.Input((sizes.tokens, sizes.width), batch_size=sizes.batch)
    moe = MixtureOfExperts(
        num_experts=experts,
        hidden_units=sizes.hidden,
        top_k=top_k,
        dispatch=dispatch,
        activation="silu",
        gated_linear_unit=True,
        use_bias=False,
    )
    model = keras.Model(tokens, moe(tokens), name=f"{dispatch}_{experts}")
    # Copies, not the arrays themselves: JAX's training step donates (frees)
    # the arrays of the model it updates.
    bank = block.expert_bank
    gate_up = keras.ops.convert_to_numpy(bank._expert_feedforward_gate_dense)
    router = keras.ops.convert_to_numpy(block._sparse_feedforward_gate_dense.kernel)
    output = keras.ops.convert_to_numpy(bank._expert_feedforward_output_dense)
    moe.router.kernel.assign(router)
    moe.expert_gate.kernel.assign(gate_up[..., : sizes.hidden])
    moe.expert_input.kernel.assign(gate_up[..., sizes.hidden :])
    moe.expert_output.kernel.assign(output)
    return model


def keras_hub_blocks(context: Context) -> list[Comparison]:
    """Dropless MixtureOfExperts against keras-hub's Qwen3-MoE block, per size."""
    sizes = EXPERTS_QUICK if context.quick else EXPERTS_FULL
    rng = np.random.default_rng(4)
    shape = (sizes.batch, sizes.tokens, sizes.width)
    x, y = tensors([random(shape, rng), random(shape, rng)])
    comparisons = []
    for experts, top_k, target in sizes.pairs:
        hub, block = _qwen3_block_model(sizes, experts, top_k)
        models = {"keras_hub": hub}
        for dispatch in ("dropless", "dense"):
            models[dispatch] = _ours_on_the_same_weights(
                sizes, experts, top_k, dispatch, block
            )
        candidates = []
        for key, model in models.items():
            model.compile(optimizer="adam", loss="mse")
            label = f"{key} E={experts} k={top_k}"
            candidates.append(
                Candidate(
                    f"train_{key}", f"{label} train", model, train_step(model, x, y)
                )
            )
            candidates.append(
                Candidate(
                    f"forward_{key}",
                    f"{label} forward",
                    model,
                    (lambda m: lambda: m.predict_on_batch(x))(model),
                )
            )
        timing = _short(context).time(candidates)
        keras.backend.clear_session()
        memory = step_memory(
            context.backend, ("dropless", "keras_hub"), experts, top_k, context.quick
        )
        for key, peaks in memory.items():
            timing["models"][f"train_{key}"].update(peaks)
        name = f"MoE block E={experts} k={top_k}"
        rows = []
        for dispatch in ("dropless", "dense"):
            rows.append(
                make_row(
                    name,
                    timing,
                    f"train_{dispatch}",
                    "train_keras_hub",
                    baseline_kind="every-expert",
                    target=target if dispatch == "dropless" else None,
                )
            )
        rows.append(
            make_row(
                name,
                timing,
                "forward_dropless",
                "forward_keras_hub",
                baseline_kind="every-expert",
                target=None,
            )
        )
        details = {
            "name": name,
            "description": (
                "MixtureOfExperts (dispatch dropless or dense, SiLU gated linear "
                "units, no biases) against keras-hub's Qwen3SparseMoeBlock on the "
                "same weights: training step (adam, mse) and forward "
                "(predict_on_batch), "
                f"{sizes.batch} x {sizes.tokens} tokens of width {sizes.width}, "
                f"{experts} experts of {sizes.hidden} hidden units, top-{top_k}; "
                "peak_mb (train_dropless, train_keras_hub): the rise of the peak "
                "resident memory of a fresh process over the model's first "
                f"{MEMORY_STEPS} training steps (tracing and compiling included), "
                "above what the backend, the model and the data held before; "
                "device_peak_mb: the accelerator's peak, where JAX reports one"
            ),
            "experts": experts,
            "top_k": top_k,
            **timing,
        }
        comparisons.append(Comparison(details, rows))
    return comparisons


# Training steps of a memory measurement: the first traces and compiles, the
# second is a step as every later one.
MEMORY_STEPS = 2


def step_memory(
    backend: str, models: tuple[str, ...], experts: int, top_k: int, quick: bool
) -> dict[str, dict[str, Any]]:
    """The peak memory of each model's first training steps.

    Each model runs in a fresh process (a process's peak resident memory
    only rises), all at once: the timing is over, and each process' own
    peak does not depend on the others.

    Args:
        backend: String, the Keras backend of the child processes.
        models: Strings, each `"dropless"` (`MixtureOfExperts`) or
            `"keras_hub"` (keras-hub's `Qwen3SparseMoeBlock`).
        experts: Integer, the number of experts.
        top_k: Integer, the experts per token.
        quick: Boolean, whether to use the tiny sizes.

    Returns:
        Per model, a dict with `peak_mb` (the rise of the process's peak
        resident memory) and `device_peak_mb` (the accelerator's peak under
        JAX, or None where there is none).
    """
    size = "quick" if quick else "full"
    processes = {
        model: subprocess.Popen(
            [sys.executable, "-m", __name__, model, str(experts), str(top_k), size],
            env=child_environment(backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model in models
    }
    outputs = {model: process.communicate() for model, process in processes.items()}
    results = {}
    for model, (stdout, stderr) in outputs.items():
        process = processes[model]
        lines = stdout.strip().splitlines()
        if process.returncode != 0 or not lines:
            message = (stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(
                f"The memory measurement of {model!r} with {experts} experts on "
                f"{backend} failed (exit code {process.returncode}): {message}"
            )
        results[model] = json.loads(lines[-1])
    return results


def _device_peak_mb() -> float | None:
    if keras.backend.backend() != "jax":
        return None
    import jax

    # CPUs report no memory statistics (None); GPUs and TPUs do.
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _reset_peak() -> int:
    """Lowers the peak resident memory to the current one, and returns it.

    Building the models may have held more than the steps' start (keras-hub's
    block beside the copy of its weights). Where Linux' reset of the
    high-water mark is not allowed, the peak so far is returned instead.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _peak_bytes()


def _step_memory_main(argv: list[str]) -> None:
    model_kind, experts, top_k, size = argv[0], int(argv[1]), int(argv[2]), argv[3]
    if model_kind not in ("dropless", "keras_hub"):
        raise ValueError(
            "Expected the model to be 'dropless' or 'keras_hub'. "
            f"Received: model={model_kind!r}"
        )
    sizes = EXPERTS_QUICK if size == "quick" else EXPERTS_FULL
    rng = np.random.default_rng(4)
    shape = (sizes.batch, sizes.tokens, sizes.width)
    x, y = tensors([random(shape, rng), random(shape, rng)])
    model, block = _qwen3_block_model(sizes, experts, top_k)
    if model_kind == "dropless":
        model = _ours_on_the_same_weights(sizes, experts, top_k, "dropless", block)
    del block
    model.compile(optimizer="adam", loss="mse")
    before = _reset_peak()
    for _ in range(MEMORY_STEPS):
        model.train_on_batch(x, y)
    result = {
        "peak_mb": (_peak_bytes() - before) / 2**20,
        "device_peak_mb": _device_peak_mb(),
    }
    print(json.dumps(result), flush=True)


def sparsified_backbone(context: Context) -> Comparison:
    """A small Qwen3-MoE backbone's forward, sparsified against original."""
    import keras_hub

    from keras_tether.moe import sparsify

    sizes = EXPERTS_QUICK if context.quick else EXPERTS_FULL
    experts, top_k = (4, 2) if context.quick else BACKBONE_EXPERTS

    def backbone() -> Any:
        return keras_hub.models.Qwen3MoeBackbone(
            vocabulary_size=1000,
            num_layers=sizes.backbone_layers,
            num_query_heads=sizes.backbone_heads,
            num_key_value_heads=sizes.backbone_heads,
            hidden_dim=sizes.width,
            intermediate_dim=2 * sizes.hidden,
            moe_intermediate_dim=sizes.hidden,
            num_experts=experts,
            top_k=top_k,
            head_dim=sizes.width // sizes.backbone_heads,
        )

    original = backbone()
    converted = backbone()
    converted.set_weights(original.get_weights())
    sparsify(converted)
    rng = np.random.default_rng(5)
    inputs = {
        "token_ids": rng.integers(1, 1000, (sizes.batch, sizes.tokens)).astype("int32"),
        "padding_mask": np.ones((sizes.batch, sizes.tokens), "int32"),
    }
    candidates = [
        Candidate(
            key, label, model, (lambda m: lambda: m.predict_on_batch(inputs))(model)
        )
        for key, label, model in (
            ("original", "Qwen3MoeBackbone forward", original),
            ("sparsified", "Qwen3MoeBackbone forward, sparsified", converted),
        )
    ]
    timing = _short(context).time(candidates)
    name = f"Qwen3-MoE backbone E={experts} k={top_k} forward"
    rows = [
        make_row(
            name,
            timing,
            "sparsified",
            "original",
            baseline_kind="every-expert",
            target=BACKBONE_TARGET,
        )
    ]
    details = {
        "name": name,
        "description": (
            f"Qwen3MoeBackbone ({sizes.backbone_layers} layers, width "
            f"{sizes.width}, {experts} experts, top-{top_k}) forward "
            f"(predict_on_batch) on {sizes.batch} x {sizes.tokens} tokens, "
            "after keras_tether.moe.sparsify against the original"
        ),
        **timing,
    }
    return Comparison(details, rows)


def _keras_hub_available() -> bool:
    return importlib.util.find_spec("keras_hub") is not None


SCENARIOS = (mixture_of_experts, gated_seed) + (
    (keras_hub_blocks, sparsified_backbone) if _keras_hub_available() else ()
)


if __name__ == "__main__":
    _step_memory_main(sys.argv[1:])
