"""`GatedAverage`: an input-dependent convex combination of parallel branches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_tether import simplex as simplex_maps
from keras_tether._types import Tensor
from keras_tether._validation import (
    check_bool,
    check_int,
    check_number,
    check_optional_int,
    get_keras_object,
)
from keras_tether.layers._router import (
    check_router_arguments,
    check_top_k_fits,
    make_router,
    token_mean,
)


@keras.saving.register_keras_serializable(package="keras_tether")
class GatedAverage(keras.layers.Layer):
    """Weighted average of parallel branches with per-example gates.

    Called on `[context, branches]`, the layer computes for every example
    gates `g = map(context @ W)` over the `N` branches and returns

    `output = g_1 * x_1 + ... + g_N * x_N`

    where `W`, shape `(context_features, N)`, is a learned router and `map`
    is a simplex map from `keras_tether.simplex` (softmax with a
    temperature by default; sparsemax and entmax-1.5 give some branches
    exactly zero weight). Where `WeightedAverage` learns one mixture for the
    whole data set, this layer chooses a mixture per example: a gated
    multi-branch network, or a soft mixture of experts whose experts are
    the branches.

    With `top_k=k` only the `k` branches of largest gate keep a weight, and
    the kept gates are renormalized to sum to one: exactly `k` non-zero
    gates per example with softmax (at most `k` with the sparse maps). The
    order is a choice: `top_k_order="map_first"` maps all logits and keeps
    the `k` largest weights (Mixtral), `"top_k_first"` keeps the `k` largest
    logits and maps only those (GPT-OSS). For softmax both orders give the
    same gates; for sparsemax and entmax-1.5 they differ.

    The router always computes in float32, whatever the dtype policy; only
    the gates are cast to the compute dtype. In training, it can perturb
    its decisions (`router_jitter`, `router_noise`) and add the auxiliary
    losses of sparse mixtures to the layer's losses: the Switch Transformer
    load-balancing loss `N * sum_i f_i * P_i`, where `f_i` is the share of
    the selections that go to branch `i` and `P_i` the mean router
    probability of branch `i` (it is 1 for perfectly balanced routing), and
    the router z-loss `mean(logsumexp(logits)^2)` of ST-MoE. If the context
    carries a Keras mask (padding), masked positions are left out of both.

    The context may have positions: with a context `(batch, ..., d)`, the
    gates have shape `(batch, ..., N)` and every branch must have the shape
    `(batch, ..., features...)` with the same leading axes.

    As with `WeightedAverage`, the branches are a list of tensors, or with
    `branch_axis` one tensor that holds them along that axis, such as the
    `(batch, N, ...)` output of `keras_tether.layers.ParallelDense`.

    `moving_mean_gates` is a non-trainable variable of shape `(N,)`: like
    `keras.layers.BatchNormalization`'s `moving_mean`, it follows the mean
    gate of each branch over the training batches (masked positions left
    out) with `momentum`, starting at `1 / N`, and sums to one. It shows
    which branches the router relies on; `MixtureWeightsHistory` records it.

    Args:
        simplex: String, `keras_tether.simplex.SimplexMap` or its config:
            how router logits map to gates. One of `"softmax"`,
            `"sparsemax"`, `"entmax15"`, `"relu_normalized"`,
            `"gumbel_softmax"`, or a map object. Defaults to `"softmax"`.
        temperature: Positive float or `None`, replacing the temperature of
            `simplex` (`"softmax"` and `"gumbel_softmax"` only). Defaults
            to `None`.
        top_k: Optional positive integer, at most `N`: how many branches
            each example keeps. Defaults to `None`, every branch.
        top_k_order: `"map_first"` or `"top_k_first"`, see above. Defaults
            to `"map_first"`.
        branch_axis: Optional integer, an axis of the stacked `branches`
            other than the batch axis (negative values count from the end).
            If set, `branches` is one tensor holding the `N >= 2` branches
            along this axis, whose size must be known when the layer is
            built. Defaults to `None`: `branches` is a list.
        normalize_router_inputs: Boolean, whether the router applies a
            `LayerNormalization` to the context first. Defaults to `False`.
        router_jitter: Float in `[0, 1)`: in training, the context is
            multiplied by noise uniform in `[1 - eps, 1 + eps]` before the
            router (Switch Transformer). Defaults to `0.0`.
        router_noise: Non-negative float, the standard deviation of
            Gaussian noise added to the router logits in training (noisy
            top-k gating). Defaults to `0.0`.
        load_balancing_coefficient: Non-negative float, the weight of the
            load-balancing loss. Defaults to `0.0` (no loss).
        z_loss_coefficient: Non-negative float, the weight of the router
            z-loss. Defaults to `0.0` (no loss).
        router_initializer: Initializer of the router kernel. Defaults to
            `"glorot_uniform"`.
        return_gates: Boolean, whether the layer returns `(output, gates)`
            instead of `output`. Defaults to `False`.
        momentum: Float in `[0, 1)`, the momentum of `moving_mean_gates`.
            Defaults to `0.99`.
        seed: Optional integer, the seed of the router's random numbers.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A list `[context, branches]`. `context` is a tensor
            `(batch, ..., d)`; `branches` a list of `N >= 2` tensors of one
            shape `(batch, ..., features...)`, or with `branch_axis` a single
            tensor with the `N` branches along that axis.
        training: Python boolean, whether the call is in training mode.
        mask: Optional masks, supplied by Keras; the context's mask marks
            the positions that count in the auxiliary losses.

    Input shape:
        `[(batch, ..., d), [(batch, ..., features...)] * N]`, or
        `[(batch, ..., d), (batch, ..., N, ...)]` with `branch_axis`.

    Output shape:
        `(batch, ..., features...)`, the shape of one branch; with
        `return_gates=True`, also the gates `(batch, ..., N)`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_tether
    >>> context = keras.Input(shape=(8,))
    >>> branches = [keras.layers.Dense(4)(context) for _ in range(3)]
    >>> layer = keras_tether.layers.GatedAverage(top_k=2, return_gates=True)
    >>> output, gates = layer([context, branches])
    >>> model = keras.Model(context, [output, gates])
    >>> y, g = model.predict(np.ones((5, 8)), verbose=0)
    >>> y.shape, g.shape
    ((5, 4), (5, 3))
    >>> print(np.round(g.sum(axis=1), 5), (g > 0).sum(axis=1))
    [1. 1. 1. 1. 1.] [2 2 2 2 2]

    References:
        - [Shazeer et al., 2017](https://arxiv.org/abs/1701.06538), noisy
          top-k gating.
        - [Fedus, Zoph and Shazeer, 2021](https://arxiv.org/abs/2101.03961),
          Switch Transformer: load-balancing loss and jitter.
        - [Zoph et al., 2022](https://arxiv.org/abs/2202.08906), ST-MoE:
          router z-loss.
        - [Jiang et al., 2024](https://arxiv.org/abs/2401.04088), Mixtral.
    """

    def __init__(
        self,
        simplex: str | simplex_maps.SimplexMap | dict = "softmax",
        temperature: float | None = None,
        top_k: int | None = None,
        top_k_order: str = "map_first",
        branch_axis: int | None = None,
        normalize_router_inputs: bool = False,
        router_jitter: float = 0.0,
        router_noise: float = 0.0,
        load_balancing_coefficient: float = 0.0,
        z_loss_coefficient: float = 0.0,
        router_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        return_gates: bool = False,
        momentum: float = 0.99,
        seed: int | None = None,
        **kwargs: Any,
    ):
        router_arguments = check_router_arguments(
            simplex,
            temperature,
            top_k,
            top_k_order,
            True,
            normalize_router_inputs,
            router_jitter,
            router_noise,
            load_balancing_coefficient,
            z_loss_coefficient,
        )
        if branch_axis is not None:
            branch_axis = check_int(branch_axis, "branch_axis")
            if branch_axis == 0:
                raise ValueError(
                    "Received an invalid value for `branch_axis`, expected an "
                    "axis other than the batch axis 0, or None. "
                    f"Received: branch_axis={branch_axis}"
                )
        momentum_value = check_number(momentum, "momentum")
        if not 0 <= momentum_value < 1:
            raise ValueError(
                "Received an invalid value for `momentum`, expected a number in "
                f"[0, 1). Received: momentum={momentum!r}"
            )
        return_gates = check_bool(return_gates, "return_gates")
        router_initializer = get_keras_object(
            keras.initializers.get,
            router_initializer,
            "router_initializer",
            "a Keras initializer, its name or its config",
        )
        seed = check_optional_int(seed, "seed")
        super().__init__(**kwargs)
        self._router_arguments = router_arguments
        self.simplex = router_arguments["simplex"]
        self.temperature = router_arguments["temperature"]
        self.top_k = router_arguments["top_k"]
        self.top_k_order = top_k_order
        self.branch_axis = branch_axis
        self.normalize_router_inputs = router_arguments["normalize_router_inputs"]
        self.router_jitter = router_arguments["router_jitter"]
        self.router_noise = router_arguments["router_noise"]
        self.load_balancing_coefficient = router_arguments["load_balancing_coefficient"]
        self.z_loss_coefficient = router_arguments["z_loss_coefficient"]
        self.router_initializer = router_initializer
        self.return_gates = return_gates
        self.momentum = momentum_value
        self.seed = seed
        self.router = None
        self.supports_masking = True

    def build(self, input_shape: Sequence[Any]) -> None:
        context_shape, num_branches, _ = self._check_shapes(input_shape)
        check_top_k_fits(self.top_k, num_branches, "branches")
        self._num_branches = num_branches
        self.router = make_router(
            num_branches, self._router_arguments, self.router_initializer, self.seed
        )
        self.router.build(context_shape)
        self.moving_mean_gates = self.add_weight(
            name="moving_mean_gates",
            shape=(num_branches,),
            initializer=keras.initializers.Constant(1.0 / num_branches),
            dtype="float32",
            trainable=False,
            autocast=False,
        )

    def call(
        self,
        inputs: Sequence[Any],
        training: bool | None = None,
        mask: Sequence[Any] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        context, branches = inputs
        context_shape = tuple(context.shape)
        branch_position = len(context_shape) - 1
        if self.branch_axis is None:
            self._check_branch_count(len(branches))
            stacked = ops.stack(list(branches), axis=branch_position)
        else:
            axis = self._resolve_branch_axis(len(branches.shape))
            self._check_branch_count(branches.shape[axis])
            stacked = ops.moveaxis(branches, axis, branch_position)
        context_mask = mask[0] if isinstance(mask, list | tuple) else None
        routing = self.router(
            context, training=bool(training), padding_mask=context_mask
        )
        gates = routing.gates
        if training:
            batch_mean = token_mean(gates, context_mask)
            self.moving_mean_gates.assign(
                self.momentum * self.moving_mean_gates
                + (1.0 - self.momentum) * batch_mean
            )
        weights = ops.cast(gates, stacked.dtype)
        for _ in range(len(stacked.shape) - branch_position - 1):
            weights = ops.expand_dims(weights, -1)
        output = ops.sum(stacked * weights, axis=branch_position)
        if self.return_gates:
            return output, ops.cast(gates, self.compute_dtype)
        return output

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        context_shape, num_branches, branch_shape = self._check_shapes(input_shape)
        if self.return_gates:
            return branch_shape, tuple(context_shape[:-1]) + (num_branches,)
        return branch_shape

    def compute_mask(self, inputs: Sequence[Any], mask: Any = None) -> Any:
        context_mask = mask[0] if isinstance(mask, list | tuple) else None
        if self.return_gates:
            return [context_mask, context_mask]
        return context_mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "simplex": keras.saving.serialize_keras_object(self.simplex),
                "temperature": self.temperature,
                "top_k": self.top_k,
                "top_k_order": self.top_k_order,
                "branch_axis": self.branch_axis,
                "normalize_router_inputs": self.normalize_router_inputs,
                "router_jitter": self.router_jitter,
                "router_noise": self.router_noise,
                "load_balancing_coefficient": self.load_balancing_coefficient,
                "z_loss_coefficient": self.z_loss_coefficient,
                "router_initializer": keras.initializers.serialize(
                    self.router_initializer
                ),
                "return_gates": self.return_gates,
                "momentum": self.momentum,
                "seed": self.seed,
            }
        )
        return config

    def _check_branch_count(self, count: int | None) -> None:
        if self.built and count is not None and count != self._num_branches:
            raise ValueError(
                f"Expected `branches` of layer '{self.name}' to hold "
                f"{self._num_branches} branches, as when it was built. "
                f"Received: branches holding {count}"
            )

    def _resolve_branch_axis(self, rank: int) -> int:
        axis = self.branch_axis + rank if self.branch_axis < 0 else self.branch_axis
        if not 1 <= axis < rank:
            raise ValueError(
                "Received an invalid value for `branch_axis`, expected an axis "
                f"of the stacked branches other than the batch axis, in "
                f"[{1 - rank}, {rank - 1}] excluding 0, for branches of rank "
                f"{rank}. Received: branch_axis={self.branch_axis}"
            )
        return axis

    def _check_shapes(self, input_shape: Any) -> tuple[tuple, int, tuple]:
        """Returns the context shape, the branch count and one branch's shape."""
        # A single tensor's shape is also a pair when the tensor has rank 2,
        # so it is told apart first: its entries are sizes, not shapes.
        if _is_shape(input_shape):
            raise TypeError(
                "Expected `inputs` of the `GatedAverage` layer to be a list "
                "`[context, branches]`, a context tensor and the branches to "
                "mix. Received: inputs=one tensor of shape "
                f"{tuple(input_shape)}"
            )
        if not isinstance(input_shape, list | tuple) or len(input_shape) != 2:
            raise TypeError(
                "Expected `inputs` of the `GatedAverage` layer to be a list "
                "`[context, branches]`, a context tensor and the branches to "
                f"mix. Received: inputs of shapes {input_shape}"
            )
        context_shape, branches_shape = input_shape
        if not _is_shape(context_shape):
            raise TypeError(
                "Expected `context` of the `GatedAverage` layer to be one "
                f"tensor. Received: context of shapes {context_shape}"
            )
        context_shape = tuple(context_shape)
        if len(context_shape) < 2:
            raise ValueError(
                "Expected `context` of the `GatedAverage` layer to have a batch "
                "axis and a feature axis, shape `(batch, ..., features)`. "
                f"Received: context of shape {context_shape}"
            )
        if context_shape[-1] is None:
            raise ValueError(
                "Expected the last axis of `context` of the `GatedAverage` "
                "layer to be known when the layer is built. Received: context "
                f"of shape {context_shape}"
            )
        lead = len(context_shape) - 1
        if self.branch_axis is not None:
            if not _is_shape(branches_shape):
                raise TypeError(
                    "Expected `branches` of the `GatedAverage` layer to be one "
                    "tensor, since `branch_axis` is set. Received: branches of "
                    f"shapes {branches_shape} with branch_axis="
                    f"{self.branch_axis}. Pass `branch_axis=None` to mix a list."
                )
            stacked = tuple(branches_shape)
            axis = self._resolve_branch_axis(len(stacked))
            num_branches = stacked[axis]
            if num_branches is None:
                raise ValueError(
                    "The branch axis of the stacked `branches` of the "
                    "`GatedAverage` layer must be known when the layer is "
                    f"built. Received: branches of shape {stacked} with "
                    f"branch_axis={self.branch_axis}"
                )
            branch_shape = stacked[:axis] + stacked[axis + 1 :]
            shapes = [branch_shape]
        else:
            if _is_shape(branches_shape):
                raise TypeError(
                    "Expected `branches` of the `GatedAverage` layer to be a "
                    "list of tensors. Received: branches=one tensor of shape "
                    f"{tuple(branches_shape)}. To mix one tensor along an "
                    "axis, pass `branch_axis`."
                )
            shapes = [tuple(shape) for shape in branches_shape]
            num_branches = len(shapes)
            if any(
                len(shape) != len(shapes[0]) or not _compatible(shape, shapes[0])
                for shape in shapes
            ):
                raise ValueError(
                    "Expected `branches` of the `GatedAverage` layer to have "
                    f"one shape. Received: branches of shapes {shapes}"
                )
            branch_shape = shapes[0]
        if num_branches < 2:
            raise ValueError(
                "Expected `branches` of the `GatedAverage` layer to hold at "
                f"least 2 branches. Received: branches holding {num_branches}"
            )
        if self.built:
            self._check_branch_count(num_branches)
        for shape in shapes:
            if len(shape) < lead or not _compatible(shape[:lead], context_shape[:-1]):
                raise ValueError(
                    "Expected `branches` of the `GatedAverage` layer to start "
                    f"with the leading axes {context_shape[:-1]} of the context "
                    f"(batch, ...). Received: a context of shape {context_shape} "
                    f"and branches of shape {shape}"
                )
        return context_shape, num_branches, branch_shape


def _is_shape(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        item is None or isinstance(item, int) for item in value
    )


def _compatible(first: tuple, second: tuple) -> bool:
    return all(
        a is None or b is None or a == b for a, b in zip(first, second, strict=True)
    )
