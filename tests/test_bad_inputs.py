"""Every public constructor argument and call input, given a bad value.

Each row makes one bad call and names the error expected: a value of the wrong
type raises `TypeError`, a value of the right type out of range `ValueError`.
The message must name the argument (`name` in backticks, or `name=`) and show
the value received, so that a user can fix the call from the message alone.
"""

import keras
import numpy as np
import pytest

from keras_tether import (
    callbacks,
    distribution,
    moe,
    parametrize,
    regularizers,
    simplex,
)
from keras_tether import ops as kt_ops
from keras_tether.layers import (
    Ensemble,
    GatedAverage,
    MixtureOfExperts,
    ParallelDense,
    Parametrized,
    ReversibleConv1D,
    ReversibleConv2D,
    ReversibleConv3D,
    ReversibleDense,
    WeightedAverage,
    weighted_average,
)


def _x(*shape):
    return np.ones(shape, dtype="float32")


def _mesh():
    return keras.distribution.DeviceMesh(
        (1, 1), axis_names=("batch", "model"), devices=["cpu:0"]
    )


def _built_model():
    return keras.Sequential([keras.Input((4,)), ParallelDense(3, branches=2)])


def _reverse_after_forward(layer, forward, backward):
    layer(forward)
    return layer(backward, reverse=True)


def _call_built(layer, first, second):
    layer(first)
    return layer(second)


def _history_on(model_layers, **kwargs):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, model_layers(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(_x(4, 4), _x(4, 3), epochs=1, verbose=0, callbacks=[kwargs["cb"]])


# (id, the bad call, the error, the argument's name, the value as printed)
CONSTRUCTORS = [
    # WeightedAverage
    ("wa-simplex-type", lambda: WeightedAverage(simplex=3), TypeError, "simplex", "3"),
    (
        "wa-simplex-name",
        lambda: WeightedAverage(simplex="max"),
        ValueError,
        "simplex",
        "'max'",
    ),
    (
        "wa-temperature-type",
        lambda: WeightedAverage(temperature="hot"),
        TypeError,
        "temperature",
        "'hot'",
    ),
    (
        "wa-temperature-range",
        lambda: WeightedAverage(temperature=0.0),
        ValueError,
        "temperature",
        "0.0",
    ),
    (
        "wa-initial-weights-sum",
        lambda: WeightedAverage(initial_weights=[0.5, 0.6]),
        ValueError,
        "initial_weights",
        "0.6",
    ),
    (
        "wa-initial-weights-type",
        lambda: WeightedAverage(initial_weights="even"),
        TypeError,
        "initial_weights",
        "'even'",
    ),
    (
        "wa-feature-axis-type",
        lambda: WeightedAverage(feature_axis=1.5),
        TypeError,
        "feature_axis",
        "1.5",
    ),
    (
        "wa-feature-axis-batch",
        lambda: WeightedAverage(feature_axis=0),
        ValueError,
        "feature_axis",
        "0",
    ),
    (
        "wa-branch-axis-type",
        lambda: WeightedAverage(branch_axis="1"),
        TypeError,
        "branch_axis",
        "'1'",
    ),
    (
        "wa-branch-axis-batch",
        lambda: WeightedAverage(branch_axis=0),
        ValueError,
        "branch_axis",
        "0",
    ),
    (
        "wa-scale-type",
        lambda: WeightedAverage(scale="yes"),
        TypeError,
        "scale",
        "'yes'",
    ),
    (
        "wa-normalize-type",
        lambda: WeightedAverage(normalize_inputs=1),
        TypeError,
        "normalize_inputs",
        "1",
    ),
    (
        "wa-dropout-type",
        lambda: WeightedAverage(branch_dropout="0.1"),
        TypeError,
        "branch_dropout",
        "'0.1'",
    ),
    (
        "wa-dropout-range",
        lambda: WeightedAverage(branch_dropout=1.0),
        ValueError,
        "branch_dropout",
        "1.0",
    ),
    (
        "wa-regularizer-type",
        lambda: WeightedAverage(mixture_regularizer=5),
        TypeError,
        "mixture_regularizer",
        "5",
    ),
    ("wa-seed-type", lambda: WeightedAverage(seed="s"), TypeError, "seed", "'s'"),
    # GatedAverage
    (
        "ga-simplex-name",
        lambda: GatedAverage(simplex="max"),
        ValueError,
        "simplex",
        "'max'",
    ),
    (
        "ga-temperature-range",
        lambda: GatedAverage(temperature=-1.0),
        ValueError,
        "temperature",
        "-1.0",
    ),
    ("ga-top-k-type", lambda: GatedAverage(top_k=1.5), TypeError, "top_k", "1.5"),
    ("ga-top-k-range", lambda: GatedAverage(top_k=0), ValueError, "top_k", "0"),
    (
        "ga-top-k-order-type",
        lambda: GatedAverage(top_k_order=1),
        TypeError,
        "top_k_order",
        "1",
    ),
    (
        "ga-top-k-order-name",
        lambda: GatedAverage(top_k_order="first"),
        ValueError,
        "top_k_order",
        "'first'",
    ),
    (
        "ga-branch-axis-type",
        lambda: GatedAverage(branch_axis=1.0),
        TypeError,
        "branch_axis",
        "1.0",
    ),
    (
        "ga-branch-axis-batch",
        lambda: GatedAverage(branch_axis=0),
        ValueError,
        "branch_axis",
        "0",
    ),
    (
        "ga-normalize-type",
        lambda: GatedAverage(normalize_router_inputs="no"),
        TypeError,
        "normalize_router_inputs",
        "'no'",
    ),
    (
        "ga-jitter-range",
        lambda: GatedAverage(router_jitter=1.0),
        ValueError,
        "router_jitter",
        "1.0",
    ),
    (
        "ga-noise-range",
        lambda: GatedAverage(router_noise=-0.1),
        ValueError,
        "router_noise",
        "-0.1",
    ),
    (
        "ga-balance-type",
        lambda: GatedAverage(load_balancing_coefficient=None),
        TypeError,
        "load_balancing_coefficient",
        "None",
    ),
    (
        "ga-z-loss-range",
        lambda: GatedAverage(z_loss_coefficient=-1),
        ValueError,
        "z_loss_coefficient",
        "-1",
    ),
    (
        "ga-initializer-name",
        lambda: GatedAverage(router_initializer="nope"),
        ValueError,
        "router_initializer",
        "nope",
    ),
    (
        "ga-return-gates-type",
        lambda: GatedAverage(return_gates=1),
        TypeError,
        "return_gates",
        "1",
    ),
    (
        "ga-momentum-range",
        lambda: GatedAverage(momentum=1.0),
        ValueError,
        "momentum",
        "1.0",
    ),
    (
        "ga-momentum-type",
        lambda: GatedAverage(momentum="fast"),
        TypeError,
        "momentum",
        "'fast'",
    ),
    ("ga-seed-type", lambda: GatedAverage(seed="s"), TypeError, "seed", "'s'"),
    # MixtureOfExperts
    ("moe-experts-type", lambda: MixtureOfExperts(4.0, 8), TypeError, "experts", "4.0"),
    ("moe-experts-range", lambda: MixtureOfExperts(0, 8), ValueError, "experts", "0"),
    (
        "moe-hidden-range",
        lambda: MixtureOfExperts(4, 0),
        ValueError,
        "hidden_units",
        "0",
    ),
    (
        "moe-top-k-range",
        lambda: MixtureOfExperts(4, 8, top_k=0),
        ValueError,
        "top_k",
        "0",
    ),
    (
        "moe-top-k-fits",
        lambda: MixtureOfExperts(4, 8, top_k=5),
        ValueError,
        "top_k",
        "5",
    ),
    (
        "moe-capacity-range",
        lambda: MixtureOfExperts(4, 8, capacity_factor=0.0),
        ValueError,
        "capacity_factor",
        "0.0",
    ),
    (
        "moe-capacity-type",
        lambda: MixtureOfExperts(4, 8, capacity_factor="1"),
        TypeError,
        "capacity_factor",
        "'1'",
    ),
    (
        "moe-dispatch-name",
        lambda: MixtureOfExperts(4, 8, dispatch="fast"),
        ValueError,
        "dispatch",
        "'fast'",
    ),
    (
        "moe-dispatch-type",
        lambda: MixtureOfExperts(4, 8, dispatch=1),
        TypeError,
        "dispatch",
        "1",
    ),
    (
        "moe-activation-name",
        lambda: MixtureOfExperts(4, 8, activation="nope"),
        ValueError,
        "activation",
        "nope",
    ),
    (
        "moe-glu-type",
        lambda: MixtureOfExperts(4, 8, gated_linear_unit=1),
        TypeError,
        "gated_linear_unit",
        "1",
    ),
    (
        "moe-use-bias-type",
        lambda: MixtureOfExperts(4, 8, use_bias="y"),
        TypeError,
        "use_bias",
        "'y'",
    ),
    (
        "moe-shared-range",
        lambda: MixtureOfExperts(4, 8, shared_expert_units=0),
        ValueError,
        "shared_expert_units",
        "0",
    ),
    (
        "moe-residual-type",
        lambda: MixtureOfExperts(4, 8, residual=1),
        TypeError,
        "residual",
        "1",
    ),
    (
        "moe-simplex-name",
        lambda: MixtureOfExperts(4, 8, simplex="max"),
        ValueError,
        "simplex",
        "'max'",
    ),
    (
        "moe-temperature-range",
        lambda: MixtureOfExperts(4, 8, temperature=0),
        ValueError,
        "temperature",
        "0",
    ),
    (
        "moe-order-name",
        lambda: MixtureOfExperts(4, 8, top_k_order="x"),
        ValueError,
        "top_k_order",
        "'x'",
    ),
    (
        "moe-normalize-top-k-type",
        lambda: MixtureOfExperts(4, 8, normalize_top_k=1),
        TypeError,
        "normalize_top_k",
        "1",
    ),
    (
        "moe-normalize-inputs-type",
        lambda: MixtureOfExperts(4, 8, normalize_router_inputs=1),
        TypeError,
        "normalize_router_inputs",
        "1",
    ),
    (
        "moe-jitter-range",
        lambda: MixtureOfExperts(4, 8, router_jitter=2.0),
        ValueError,
        "router_jitter",
        "2.0",
    ),
    (
        "moe-noise-range",
        lambda: MixtureOfExperts(4, 8, router_noise=-1.0),
        ValueError,
        "router_noise",
        "-1.0",
    ),
    (
        "moe-balance-range",
        lambda: MixtureOfExperts(4, 8, load_balancing_coefficient=-1.0),
        ValueError,
        "load_balancing_coefficient",
        "-1.0",
    ),
    (
        "moe-z-loss-type",
        lambda: MixtureOfExperts(4, 8, z_loss_coefficient="0"),
        TypeError,
        "z_loss_coefficient",
        "'0'",
    ),
    (
        "moe-kernel-init-name",
        lambda: MixtureOfExperts(4, 8, kernel_initializer="nope"),
        ValueError,
        "kernel_initializer",
        "nope",
    ),
    (
        "moe-bias-init-name",
        lambda: MixtureOfExperts(4, 8, bias_initializer="nope"),
        ValueError,
        "bias_initializer",
        "nope",
    ),
    (
        "moe-router-init-name",
        lambda: MixtureOfExperts(4, 8, router_initializer="nope"),
        ValueError,
        "router_initializer",
        "nope",
    ),
    (
        "moe-seed-type",
        lambda: MixtureOfExperts(4, 8, seed=1.5),
        TypeError,
        "seed",
        "1.5",
    ),
    # ParallelDense
    ("pd-units-type", lambda: ParallelDense(2.0, 3), TypeError, "units", "2.0"),
    ("pd-units-range", lambda: ParallelDense(0, 3), ValueError, "units", "0"),
    ("pd-branches-type", lambda: ParallelDense(2, "3"), TypeError, "branches", "'3'"),
    ("pd-branches-range", lambda: ParallelDense(2, 0), ValueError, "branches", "0"),
    (
        "pd-activation-name",
        lambda: ParallelDense(2, 3, activation="nope"),
        ValueError,
        "activation",
        "nope",
    ),
    (
        "pd-use-bias-type",
        lambda: ParallelDense(2, 3, use_bias=1),
        TypeError,
        "use_bias",
        "1",
    ),
    (
        "pd-kernel-init-name",
        lambda: ParallelDense(2, 3, kernel_initializer="nope"),
        ValueError,
        "kernel_initializer",
        "nope",
    ),
    (
        "pd-bias-init-name",
        lambda: ParallelDense(2, 3, bias_initializer="nope"),
        ValueError,
        "bias_initializer",
        "nope",
    ),
    (
        "pd-kernel-reg-name",
        lambda: ParallelDense(2, 3, kernel_regularizer="nope"),
        ValueError,
        "kernel_regularizer",
        "nope",
    ),
    (
        "pd-bias-reg-name",
        lambda: ParallelDense(2, 3, bias_regularizer="nope"),
        ValueError,
        "bias_regularizer",
        "nope",
    ),
    (
        "pd-activity-reg-name",
        lambda: ParallelDense(2, 3, activity_regularizer="nope"),
        ValueError,
        "activity_regularizer",
        "nope",
    ),
    (
        "pd-kernel-constraint-name",
        lambda: ParallelDense(2, 3, kernel_constraint="nope"),
        ValueError,
        "kernel_constraint",
        "nope",
    ),
    (
        "pd-bias-constraint-name",
        lambda: ParallelDense(2, 3, bias_constraint="nope"),
        ValueError,
        "bias_constraint",
        "nope",
    ),
    (
        "pd-per-branch-type",
        lambda: ParallelDense(2, 3, per_branch_inputs=1),
        TypeError,
        "per_branch_inputs",
        "1",
    ),
    (
        "pd-lora-rank-type",
        lambda: ParallelDense(2, 3, lora_rank=1.5),
        TypeError,
        "lora_rank",
        "1.5",
    ),
    (
        "pd-lora-rank-range",
        lambda: ParallelDense(2, 3, lora_rank=0),
        ValueError,
        "lora_rank",
        "0",
    ),
    (
        "pd-lora-alpha-range",
        lambda: ParallelDense(2, 3, lora_rank=1, lora_alpha=-1.0),
        ValueError,
        "lora_alpha",
        "-1.0",
    ),
    (
        "pd-lora-alpha-type",
        lambda: ParallelDense(2, 3, lora_rank=1, lora_alpha="a"),
        TypeError,
        "lora_alpha",
        "'a'",
    ),
    # Parametrized
    (
        "pz-layer-type",
        lambda: Parametrized("dense", {"kernel": parametrize.Positive()}),
        TypeError,
        "layer",
        "'dense'",
    ),
    (
        "pz-parametrizations-type",
        lambda: Parametrized(keras.layers.Dense(2), [parametrize.Positive()]),
        TypeError,
        "parametrizations",
        "Positive",
    ),
    (
        "pz-parametrizations-empty",
        lambda: Parametrized(keras.layers.Dense(2), {}),
        ValueError,
        "parametrizations",
        "{}",
    ),
    (
        "pz-parametrization-value",
        lambda: Parametrized(keras.layers.Dense(2), {"kernel": "positive"}),
        TypeError,
        "parametrizations",
        "'positive'",
    ),
    (
        "pz-initial-name",
        lambda: Parametrized(
            keras.layers.Dense(2), {"kernel": parametrize.Positive()}, initial="new"
        ),
        ValueError,
        "initial",
        "'new'",
    ),
    (
        "pz-seed-type",
        lambda: Parametrized(
            keras.layers.Dense(2), {"kernel": parametrize.Positive()}, seed=1.5
        ),
        TypeError,
        "seed",
        "1.5",
    ),
    # Simplex maps
    (
        "softmax-temperature",
        lambda: simplex.Softmax(temperature=0),
        ValueError,
        "temperature",
        "0",
    ),
    (
        "softmax-temperature-type",
        lambda: simplex.Softmax(temperature="1"),
        TypeError,
        "temperature",
        "'1'",
    ),
    (
        "gumbel-temperature",
        lambda: simplex.GumbelSoftmax(temperature=-1.0),
        ValueError,
        "temperature",
        "-1.0",
    ),
    ("gumbel-hard-type", lambda: simplex.GumbelSoftmax(hard=1), TypeError, "hard", "1"),
    (
        "relu-epsilon-range",
        lambda: simplex.ReluNormalized(epsilon=-1.0),
        ValueError,
        "epsilon",
        "-1.0",
    ),
    (
        "relu-epsilon-type",
        lambda: simplex.ReluNormalized(epsilon="e"),
        TypeError,
        "epsilon",
        "'e'",
    ),
    ("get-name", lambda: simplex.get("max"), ValueError, "simplex", "'max'"),
    ("get-type", lambda: simplex.get(3), TypeError, "simplex", "3"),
    (
        "get-temperature",
        lambda: simplex.get("softmax", temperature=0.0),
        ValueError,
        "temperature",
        "0.0",
    ),
    (
        "deserialize-type",
        lambda: simplex.deserialize("softmax"),
        TypeError,
        "config",
        "'softmax'",
    ),
    (
        "serialize-type",
        lambda: simplex.serialize("softmax"),
        TypeError,
        "simplex_map",
        "'softmax'",
    ),
    # Parametrizations
    ("lowrank-rank-type", lambda: parametrize.LowRank(1.5), TypeError, "rank", "1.5"),
    ("lowrank-rank-range", lambda: parametrize.LowRank(0), ValueError, "rank", "0"),
    (
        "orthogonal-method",
        lambda: parametrize.Orthogonal(method="svd"),
        ValueError,
        "method",
        "'svd'",
    ),
    (
        "orthogonal-method-type",
        lambda: parametrize.Orthogonal(method=1),
        TypeError,
        "method",
        "1",
    ),
    (
        "orthogonal-batch-axes-type",
        lambda: parametrize.Orthogonal(batch_axes=1.0),
        TypeError,
        "batch_axes",
        "1.0",
    ),
    (
        "orthogonal-batch-axes-range",
        lambda: parametrize.Orthogonal(batch_axes=-1),
        ValueError,
        "batch_axes",
        "-1",
    ),
    (
        "positive-function",
        lambda: parametrize.Positive(function="relu"),
        ValueError,
        "function",
        "'relu'",
    ),
    (
        "positive-function-type",
        lambda: parametrize.Positive(function=1),
        TypeError,
        "function",
        "1",
    ),
    (
        "positive-minimum",
        lambda: parametrize.Positive(minimum=0.0),
        ValueError,
        "minimum",
        "0.0",
    ),
    (
        "positive-minimum-type",
        lambda: parametrize.Positive(minimum="1"),
        TypeError,
        "minimum",
        "'1'",
    ),
    (
        "positive-floor",
        lambda: parametrize.Positive(floor=-1.0),
        ValueError,
        "floor",
        "-1.0",
    ),
    (
        "simplex-axis-type",
        lambda: parametrize.Simplex(axis=1.5),
        TypeError,
        "axis",
        "1.5",
    ),
    (
        "simplex-simplex-name",
        lambda: parametrize.Simplex(simplex="max"),
        ValueError,
        "simplex",
        "'max'",
    ),
    (
        "spectral-iterations-type",
        lambda: parametrize.SpectralNorm(power_iterations=1.5),
        TypeError,
        "power_iterations",
        "1.5",
    ),
    (
        "spectral-iterations-range",
        lambda: parametrize.SpectralNorm(power_iterations=0),
        ValueError,
        "power_iterations",
        "0",
    ),
    (
        "spectral-exact-type",
        lambda: parametrize.SpectralNorm(exact=1),
        TypeError,
        "exact",
        "1",
    ),
    (
        "unitnorm-axis-type",
        lambda: parametrize.UnitNorm(axis="0"),
        TypeError,
        "axis",
        "'0'",
    ),
    (
        "unitnorm-axis-empty",
        lambda: parametrize.UnitNorm(axis=[]),
        ValueError,
        "axis",
        "[]",
    ),
    (
        "weightnorm-axis-type",
        lambda: parametrize.WeightNorm(axis=1.5),
        TypeError,
        "axis",
        "1.5",
    ),
    (
        "p-deserialize-type",
        lambda: parametrize.deserialize("positive"),
        TypeError,
        "config",
        "'positive'",
    ),
    (
        "p-serialize-type",
        lambda: parametrize.serialize("positive"),
        TypeError,
        "parametrization",
        "'positive'",
    ),
    # Regularizers, callbacks, distribution
    (
        "entropy-strength-type",
        lambda: regularizers.EntropyRegularizer("big"),
        TypeError,
        "strength",
        "'big'",
    ),
    (
        "entropy-strength-range",
        lambda: regularizers.EntropyRegularizer(-1.0),
        ValueError,
        "strength",
        "-1.0",
    ),
    (
        "entropy-toward-name",
        lambda: regularizers.EntropyRegularizer(toward="dense"),
        ValueError,
        "toward",
        "'dense'",
    ),
    (
        "entropy-toward-type",
        lambda: regularizers.EntropyRegularizer(toward=1),
        TypeError,
        "toward",
        "1",
    ),
    (
        "history-csv-type",
        lambda: callbacks.MixtureWeightsHistory(csv_path=3),
        TypeError,
        "csv_path",
        "3",
    ),
    (
        "history-layers-type",
        lambda: callbacks.MixtureWeightsHistory(layers=3),
        TypeError,
        "layers",
        "3",
    ),
    (
        "history-layers-empty",
        lambda: callbacks.MixtureWeightsHistory(layers=[]),
        ValueError,
        "layers",
        "[]",
    ),
    (
        "history-layers-twice",
        lambda: callbacks.MixtureWeightsHistory(layers=["a", "a"]),
        ValueError,
        "layers",
        "['a', 'a']",
    ),
    (
        "layout-model-type",
        lambda: distribution.branch_layout_map("notamodel", _mesh()),
        TypeError,
        "model",
        "'notamodel'",
    ),
    (
        "layout-mesh-type",
        lambda: distribution.branch_layout_map(_built_model(), "mesh"),
        TypeError,
        "mesh",
        "'mesh'",
    ),
    (
        "layout-axis-name-type",
        lambda: distribution.branch_layout_map(
            _built_model(), _mesh(), branch_axis_name=1
        ),
        TypeError,
        "branch_axis_name",
        "1",
    ),
    (
        "layout-axis-name",
        lambda: distribution.branch_layout_map(
            _built_model(), _mesh(), branch_axis_name="experts"
        ),
        ValueError,
        "branch_axis_name",
        "'experts'",
    ),
    (
        "layout-map-type",
        lambda: distribution.branch_layout_map(_built_model(), _mesh(), layout_map={}),
        TypeError,
        "layout_map",
        "{}",
    ),
    # ReversibleDense
    ("rd-units", lambda: ReversibleDense(0), ValueError, "units", "0"),
    (
        "rd-reverse-use-bias",
        lambda: ReversibleDense(2, reverse_use_bias="yes"),
        TypeError,
        "reverse_use_bias",
        "'yes'",
    ),
    (
        "rd-reverse-activation",
        lambda: ReversibleDense(2, reverse_activation="nope"),
        ValueError,
        "reverse_activation",
        "'nope'",
    ),
    (
        "rd-activation",
        lambda: ReversibleDense(2, activation=3),
        TypeError,
        "activation",
        "3",
    ),
    (
        "rd-reverse-bias-initializer",
        lambda: ReversibleDense(2, reverse_bias_initializer="nope"),
        ValueError,
        "reverse_bias_initializer",
        "'nope'",
    ),
    (
        "rd-reverse-bias-regularizer",
        lambda: ReversibleDense(2, reverse_bias_regularizer="nope"),
        ValueError,
        "reverse_bias_regularizer",
        "'nope'",
    ),
    (
        "rd-reverse-bias-constraint",
        lambda: ReversibleDense(2, reverse_bias_constraint="nope"),
        ValueError,
        "reverse_bias_constraint",
        "'nope'",
    ),
    # ReversibleConv1D/2D/3D
    ("rc1-filters", lambda: ReversibleConv1D(0, 3), ValueError, "filters", "0"),
    ("rc2-groups", lambda: ReversibleConv2D(4, 3, groups=2), ValueError, "groups", "2"),
    (
        "rc2-reverse-activation",
        lambda: ReversibleConv2D(4, 3, reverse_activation="nope"),
        ValueError,
        "reverse_activation",
        "'nope'",
    ),
    (
        "rc3-reverse-use-bias",
        lambda: ReversibleConv3D(4, 3, reverse_use_bias=1),
        TypeError,
        "reverse_use_bias",
        "1",
    ),
    # Ensemble
    ("ens-layer", lambda: Ensemble("dense", 3), TypeError, "layer", "'dense'"),
    (
        "ens-branches",
        lambda: Ensemble(keras.layers.Dense(2), 0),
        ValueError,
        "branches",
        "0",
    ),
    (
        "ens-branches-type",
        lambda: Ensemble(keras.layers.Dense(2), 2.5),
        TypeError,
        "branches",
        "2.5",
    ),
    (
        "ens-per-branch-inputs",
        lambda: Ensemble(keras.layers.Dense(2), 2, per_branch_inputs="yes"),
        TypeError,
        "per_branch_inputs",
        "'yes'",
    ),
    (
        "ens-seed",
        lambda: Ensemble(keras.layers.Dense(2), 2, seed="s"),
        TypeError,
        "seed",
        "'s'",
    ),
    ("ens-from-models", lambda: Ensemble.from_models([]), ValueError, "models", "[]"),
    # keras_tether.moe
    ("sparsify-model", lambda: moe.sparsify("model"), TypeError, "model", "'model'"),
]

# Call inputs of the wrong structure, rank or size.
CALLS = [
    (
        "wa-one-tensor",
        lambda: WeightedAverage()(_x(2, 3)),
        TypeError,
        "inputs",
        "(2, 3)",
    ),
    ("wa-one-branch", lambda: WeightedAverage()([_x(2, 3)]), ValueError, "inputs", "1"),
    (
        "wa-mismatched",
        lambda: WeightedAverage()([_x(2, 3), _x(2, 4)]),
        ValueError,
        "inputs",
        "(2, 4)",
    ),
    (
        "wa-stacked-rank",
        lambda: WeightedAverage(branch_axis=2)(_x(2, 3)),
        ValueError,
        "branch_axis",
        "2",
    ),
    (
        "wa-count-changes",
        lambda: _call_built(WeightedAverage(), [_x(2, 3)] * 3, [_x(2, 3)] * 2),
        ValueError,
        "inputs",
        "2",
    ),
    (
        "wa-function-one-tensor",
        lambda: weighted_average(_x(2, 3)),
        TypeError,
        "inputs",
        "(2, 3)",
    ),
    ("ga-one-tensor", lambda: GatedAverage()(_x(2, 3)), TypeError, "inputs", "(2, 3)"),
    ("ga-one-item", lambda: GatedAverage()([_x(2, 3)]), TypeError, "inputs", "(2, 3)"),
    (
        "ga-context-not-one",
        lambda: GatedAverage()([[_x(2, 3)] * 2, [_x(2, 3)] * 2]),
        TypeError,
        "context",
        "(2, 3)",
    ),
    (
        "ga-context-rank",
        lambda: GatedAverage()([_x(2), [_x(2, 3)] * 2]),
        ValueError,
        "context",
        "(2,)",
    ),
    (
        "ga-stacked-without-axis",
        lambda: GatedAverage()([_x(2, 4), _x(2, 3, 5)]),
        TypeError,
        "branches",
        "(2, 3, 5)",
    ),
    (
        "ga-list-with-axis",
        lambda: GatedAverage(branch_axis=1)([_x(2, 4), [_x(2, 3)] * 2]),
        TypeError,
        "branches",
        "(2, 3)",
    ),
    (
        "ga-one-branch",
        lambda: GatedAverage()([_x(2, 4), [_x(2, 3)]]),
        ValueError,
        "branches",
        "1",
    ),
    (
        "ga-mismatched",
        lambda: GatedAverage()([_x(2, 4), [_x(2, 3), _x(2, 5)]]),
        ValueError,
        "branches",
        "(2, 5)",
    ),
    (
        "ga-batch-mismatch",
        lambda: GatedAverage()([_x(2, 4), [_x(3, 3)] * 2]),
        ValueError,
        "branches",
        "(3, 3)",
    ),
    (
        "ga-axis-range",
        lambda: GatedAverage(branch_axis=3)([_x(2, 4), _x(2, 3, 5)]),
        ValueError,
        "branch_axis",
        "3",
    ),
    (
        "ga-top-k-fits",
        lambda: GatedAverage(top_k=3)([_x(2, 4), [_x(2, 3)] * 2]),
        ValueError,
        "top_k",
        "3",
    ),
    (
        "ga-count-changes",
        lambda: _call_built(
            GatedAverage(), [_x(2, 4), [_x(2, 3)] * 3], [_x(2, 4), [_x(2, 3)] * 2]
        ),
        ValueError,
        "branches",
        "2",
    ),
    ("moe-rank-1", lambda: MixtureOfExperts(4, 8)(_x(4)), ValueError, "inputs", "(4,)"),
    (
        "moe-features-change",
        lambda: _call_built(MixtureOfExperts(4, 8), _x(2, 4), _x(2, 5)),
        ValueError,
        "inputs",
        "(2, 5)",
    ),
    ("pd-rank-1", lambda: ParallelDense(2, 3)(_x(4)), ValueError, "inputs", "(4,)"),
    (
        "pd-features-change",
        lambda: _call_built(ParallelDense(2, 3), _x(2, 4), _x(2, 5)),
        ValueError,
        "inputs",
        "(2, 5)",
    ),
    (
        "pd-per-branch-axis",
        lambda: ParallelDense(2, 3, per_branch_inputs=True)(_x(2, 2, 4)),
        ValueError,
        "inputs",
        "(2, 2, 4)",
    ),
    (
        "pz-unknown-weight",
        lambda: Parametrized(keras.layers.Dense(2), {"kernal": parametrize.Positive()})(
            _x(2, 3)
        ),
        ValueError,
        "parametrizations",
        "kernal",
    ),
    (
        "orthogonal-rank-1",
        lambda: Parametrized(keras.layers.Dense(2), {"bias": parametrize.Orthogonal()})(
            _x(2, 3)
        ),
        ValueError,
        "shape",
        "(2,)",
    ),
    (
        "symmetric-not-square",
        lambda: Parametrized(
            keras.layers.Dense(2), {"kernel": parametrize.Symmetric()}
        )(_x(2, 3)),
        ValueError,
        "shape",
        "(3, 2)",
    ),
    (
        "lowrank-rank-too-large",
        lambda: Parametrized(keras.layers.Dense(2), {"kernel": parametrize.LowRank(3)})(
            _x(2, 3)
        ),
        ValueError,
        "rank",
        "3",
    ),
    (
        "softmax-axis",
        lambda: simplex.softmax(_x(2, 3), axis=2),
        ValueError,
        "axis",
        "2",
    ),
    (
        "softmax-axis-type",
        lambda: simplex.softmax(_x(2, 3), axis=1.0),
        TypeError,
        "axis",
        "1.0",
    ),
    (
        "softmax-temperature-fn",
        lambda: simplex.softmax(_x(2, 3), temperature=0.0),
        ValueError,
        "temperature",
        "0.0",
    ),
    (
        "softmax-mask-shape",
        lambda: simplex.softmax(_x(2, 3), mask=np.ones((2, 4), bool)),
        ValueError,
        "mask",
        "(2, 4)",
    ),
    (
        "sparsemax-axis",
        lambda: simplex.sparsemax(_x(2, 3), axis=-3),
        ValueError,
        "axis",
        "-3",
    ),
    (
        "entmax-axis",
        lambda: simplex.entmax15(_x(2, 3), axis=5),
        ValueError,
        "axis",
        "5",
    ),
    (
        "relu-epsilon-fn",
        lambda: simplex.relu_normalized(_x(2, 3), epsilon=-1.0),
        ValueError,
        "epsilon",
        "-1.0",
    ),
    (
        "gumbel-hard-fn",
        lambda: simplex.gumbel_softmax(_x(2, 3), hard="yes"),
        TypeError,
        "hard",
        "'yes'",
    ),
    (
        "entropy-on-scalar",
        lambda: regularizers.EntropyRegularizer()(np.float32(0.5)),
        ValueError,
        "weights",
        "()",
    ),
    # ReversibleDense and ReversibleConv: the reverse direction
    (
        "rd-reverse-unbuilt",
        lambda: ReversibleDense(2)(_x(2, 2), reverse=True),
        ValueError,
        "reverse",
        "reverse=True",
    ),
    (
        "rd-reverse-features",
        lambda: _reverse_after_forward(ReversibleDense(2), _x(2, 4), _x(2, 3)),
        ValueError,
        "inputs.shape",
        "(2, 3)",
    ),
    (
        "rd-reverse-type",
        lambda: ReversibleDense(2)(_x(2, 4), reverse="yes"),
        TypeError,
        "reverse",
        "'yes'",
    ),
    (
        "rc2-reverse-channels",
        lambda: _reverse_after_forward(
            ReversibleConv2D(4, 3), _x(1, 5, 5, 2), _x(1, 3, 3, 3)
        ),
        ValueError,
        "inputs.shape",
        "(1, 3, 3, 3)",
    ),
    # Ensemble
    (
        "ens-per-branch-axis",
        lambda: Ensemble(keras.layers.Dense(2), 3, per_branch_inputs=True)(_x(2, 2, 4)),
        ValueError,
        "input_shape",
        "(2, 2, 4)",
    ),
    # keras_tether.ops.grouped_matmul
    (
        "gm-inputs-rank",
        lambda: kt_ops.grouped_matmul(_x(4), _x(2, 4, 3), np.array([2, 2])),
        ValueError,
        "inputs.shape",
        "(4,)",
    ),
    (
        "gm-kernels-rank",
        lambda: kt_ops.grouped_matmul(_x(4, 4), _x(4, 3), np.array([2, 2])),
        ValueError,
        "kernels.shape",
        "(4, 3)",
    ),
    (
        "gm-features",
        lambda: kt_ops.grouped_matmul(_x(4, 5), _x(2, 4, 3), np.array([2, 2])),
        ValueError,
        "kernels.shape",
        "(2, 4, 3)",
    ),
    (
        "gm-group-sizes",
        lambda: kt_ops.grouped_matmul(_x(4, 4), _x(2, 4, 3), np.array([2, 2, 0])),
        ValueError,
        "group_sizes.shape",
        "(3,)",
    ),
    (
        "gm-tile-size",
        lambda: kt_ops.grouped_matmul(
            _x(4, 4), _x(2, 4, 3), np.array([2, 2]), tile_size=0
        ),
        ValueError,
        "tile_size",
        "0",
    ),
]


def _rows(table):
    return [pytest.param(*row[1:], id=row[0]) for row in table]


def _check(make, error, argument, received):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    message = str(info.value)
    assert type(info.value) is error or isinstance(info.value, error), (
        f"expected {error.__name__}, got {type(info.value).__name__}: {message}"
    )
    assert f"`{argument}`" in message or f"{argument}=" in message, message
    assert received in message, message


@pytest.mark.parametrize("make, error, argument, received", _rows(CONSTRUCTORS))
def test_bad_constructor_argument(make, error, argument, received):
    _check(make, error, argument, received)


@pytest.mark.parametrize("make, error, argument, received", _rows(CALLS))
def test_bad_call_input(make, error, argument, received):
    _check(make, error, argument, received)


def test_every_public_constructor_is_in_the_table():
    """A new public class or function must get rows here."""
    import keras_tether

    covered = " ".join(row[0] for row in CONSTRUCTORS + CALLS)
    prefixes = {
        "WeightedAverage": "wa-",
        "weighted_average": "wa-function",
        "GatedAverage": "ga-",
        "MixtureOfExperts": "moe-",
        "ParallelDense": "pd-",
        "Parametrized": "pz-",
        "Softmax": "softmax-",
        "GumbelSoftmax": "gumbel-",
        "ReluNormalized": "relu-",
        "Sparsemax": "sparsemax-",
        "Entmax15": "entmax-",
        "LowRank": "lowrank-",
        "Orthogonal": "orthogonal-",
        "Positive": "positive-",
        "Simplex": "simplex-",
        "SpectralNorm": "spectral-",
        "Symmetric": "symmetric-",
        "UnitNorm": "unitnorm-",
        "WeightNorm": "weightnorm-",
        "EntropyRegularizer": "entropy-",
        "MixtureWeightsHistory": "history-",
        "branch_layout_map": "layout-",
        "ReversibleDense": "rd-",
        "ReversibleConv1D": "rc1-",
        "ReversibleConv2D": "rc2-",
        "ReversibleConv3D": "rc3-",
        "Ensemble": "ens-",
        "grouped_matmul": "gm-",
        "sparsify": "sparsify-",
    }
    public = set(keras_tether.layers.__all__) | set(parametrize.__all__)
    public |= set(simplex.__all__) | set(regularizers.__all__)
    public |= set(callbacks.__all__) | set(distribution.__all__)
    public |= set(kt_ops.__all__) | set(moe.__all__)
    # Without arguments to check, or checked by the rows of their functions.
    argument_free = {
        "SimplexMap",
        "Parametrization",
        "Skew",
        "cached",
        "softmax",
        "sparsemax",
        "entmax15",
        "relu_normalized",
        "gumbel_softmax",
        "get",
        "serialize",
        "deserialize",
    }
    missing = [
        name
        for name in sorted(public - argument_free)
        if prefixes.get(name) is None or prefixes[name] not in covered
    ]
    assert not missing, missing
