"""`MixtureOfExperts`: a feed-forward mixture of experts, dropless or capped."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether import simplex as simplex_maps
from keras_tether._types import Shape, Tensor
from keras_tether._validation import (
    check_bool,
    check_optional_int,
    check_positive_int,
    check_positive_number,
    keras_identifiers,
)
from keras_tether.layers._parallel_dense import ParallelDense
from keras_tether.layers._router import (
    check_router_arguments,
    check_top_k_fits,
    make_router,
)
from keras_tether.ops._dropless import combine, sort_assignments
from keras_tether.ops._grouped_matmul import tiled_product

DISPATCHES = ("dropless", "sparse", "dense")


@keras.saving.register_keras_serializable(package="keras_tether")
class MixtureOfExperts(keras.layers.Layer):
    """Feed-forward mixture of experts: each token computed by its top-k experts.

    Every token `x` (the last axis of the input) is routed by a learned
    router to `top_k` of `num_experts` feed-forward networks
    `f_e(x) = W2_e act(W1_e x + b1_e) + b2_e` (with `gated_linear_unit=True`,
    `W2_e (act(Wg_e x) * (W1_e x))`, as in Mixtral's SwiGLU experts), and the
    layer returns the gated sum `y = sum_{e in top-k} g_e(x) f_e(x)`. The
    router is the one of `GatedAverage`: a float32 `Dense` to `num_experts`
    logits, a simplex map (softmax by default), the top-k in either order,
    training-time jitter or noise, and the Switch load-balancing loss and
    router z-loss added to the layer's losses in training (padding
    positions, marked by the input's Keras mask, left out). With the
    default `top_k_order="map_first"` and `normalize_top_k=True` the router
    is Mixtral's (softmax, top-k, renormalize); `normalize_top_k=False`
    keeps the raw probabilities (Switch Transformer, Qwen-MoE).

    The experts are `ParallelDense` layers: their kernels are stacked,
    `(num_experts, input_dim, hidden_units)` and `(num_experts, hidden_units,
    input_dim)`, and each expert is initialized as a separate `Dense` would
    be. The expert axis comes first in every expert weight, and
    `keras_tether.distribution.branch_layout_map` shards it over a device
    mesh (expert parallelism).

    **Dropless dispatch** (the default) computes each token with each of
    its selected experts, and never drops one: the token-expert assignments
    are sorted by expert and multiplied by their expert's kernels with
    `keras_tether.ops.grouped_matmul`'s tiled product (each expert's rows
    padded to a tile, one batched product over the tiles, static shapes),
    then gathered back and summed with their gates. The expert FLOPs grow
    with `tokens * top_k` (plus at most one tile of padding per expert),
    not with `tokens * num_experts`. This is the default because it is the
    function keras-hub's MoE models, Mixtral and Qwen compute (no token is
    ever dropped, whatever the batch), at a cost close to the work actually
    needed; a capacity limit trades quality for speed and is an explicit
    choice. Choices whose gate is exactly zero (possible with
    `simplex="sparsemax"` or `"entmax15"`) are not computed.

    **Sparse dispatch** (`dispatch="sparse"`) computes each token only with
    its selected experts, GShard-style, with static shapes (so the step
    compiles with XLA on JAX and TensorFlow): the tokens of each example
    form a group (for a 2-D input, the batch is one group), each expert
    takes at most
    `capacity = ceil(capacity_factor * tokens * top_k / num_experts)` tokens of
    a group, positions in an expert are given by cumulative sums (all first
    choices before any second choice, in token order), and one-hot dispatch
    and combine tensors gather tokens into `(experts, capacity)` slots and
    scatter the results back with einsums. An assignment over capacity is
    dropped: the token gets nothing from that expert (a token dropped by
    all its experts gets zero, so the residual connection around the layer,
    or `residual=True`, passes it through unchanged). The expert FLOPs are
    about `capacity_factor * top_k / num_experts` of computing every
    expert. `capacity_factor=None` sets the capacity to the group size:
    nothing is ever dropped. (A 2-D input whose batch size is unknown while
    tracing has no static shape; the sparse and dropless dispatches then
    compute densely, the same function.)

    **Dense dispatch** (`dispatch="dense"`) computes every expert on every
    token and multiplies by the (mostly zero) gates, as the MoE blocks of
    keras-hub do. It costs `num_experts / top_k` times the expert FLOPs of
    the dropless dispatch. Every dispatch computes the same function (the
    capacity included, for the sparse and dense ones); only their cost
    differs.

    The assignments routed (choices with a non-zero gate) and dropped in
    training calls are counted in the
    non-trainable variables `routed_assignments` and `dropped_assignments`
    (variables rather than a `keras.metrics.Metric` because they are
    updated inside the layer, where only variables are carried through
    JAX's stateless training step); `dropped_fraction` reads their ratio,
    `reset_assignment_counts()` zeroes them.

    Args:
        num_experts: Positive integer, the number of experts.
        hidden_units: Positive integer, the hidden width of each expert.
        top_k: Positive integer, at most `num_experts`: how many experts
            each token uses. Defaults to `2`.
        capacity_factor: Positive float or `None`, the slack of each
            expert's capacity over a perfectly balanced share, with
            `dispatch="sparse"` or `"dense"`; must be `None` (no capacity)
            with `dispatch="dropless"`. Defaults to `None`.
        dispatch: `"dropless"`, `"sparse"` or `"dense"`, see above.
            Defaults to `"dropless"`.
        activation: Activation of the experts' hidden layer. Defaults to
            `"gelu"`.
        gated_linear_unit: Boolean, whether the experts are gated linear
            units (`act` applied to a second projection that multiplies the
            first). Defaults to `False`.
        use_bias: Boolean, whether the experts have biases. Defaults to
            `True`.
        shared_expert_units: Optional positive integer: the hidden width of
            an expert that every token uses, its output scaled by a
            learned sigmoid gate `sigmoid(x . w)` (Qwen-MoE). Defaults to
            `None` (no shared expert).
        residual: Boolean, whether the layer adds its input to its output.
            Defaults to `False`.
        simplex: The router's simplex map, as in `GatedAverage`.
        temperature: The router's temperature, as in `GatedAverage`.
        top_k_order: The order of top-k and the map, as in `GatedAverage`.
        normalize_router_inputs: As in `GatedAverage`.
        router_jitter: As in `GatedAverage`.
        router_noise: As in `GatedAverage`.
        z_loss_coefficient: As in `GatedAverage`.
        router_initializer: As in `GatedAverage`.
        seed: The router's random seed, as in `GatedAverage`.
        normalize_top_k: Boolean, whether the `top_k` gates of a token are
            renormalized to sum to one (with `top_k_order="map_first"`).
            Defaults to `True`.
        load_balancing_coefficient: Non-negative float, the weight of the
            Switch load-balancing loss. Defaults to `0.01`.
        kernel_initializer: Initializer of each expert's kernels (applied
            per expert). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer of the experts' biases. Defaults to
            `"zeros"`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor `(batch, ..., features)`.
        training: Python boolean, whether the call is in training mode.
        mask: Optional padding mask `(batch, ...)`, supplied by Keras:
            masked tokens are not routed and get zero (plus the input with
            `residual=True`).

    Input shape:
        `(batch, ..., features)`. The sizes of the axes between the batch
        and the feature axis must be known.

    Output shape:
        The input shape.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_tether
    >>> tokens = keras.Input(shape=(6, 8))
    >>> moe = keras_tether.layers.MixtureOfExperts(
    ...     num_experts=4, hidden_units=16, top_k=2
    ... )
    >>> model = keras.Model(tokens, moe(tokens))
    >>> x = np.random.default_rng(0).normal(size=(2, 6, 8))
    >>> model.predict(x, verbose=0).shape
    (2, 6, 8)
    >>> dense = keras_tether.layers.MixtureOfExperts.from_config(
    ...     {**moe.get_config(), "dispatch": "dense"}
    ... )
    >>> _ = dense(x)
    >>> dense.set_weights(moe.get_weights())
    >>> bool(np.allclose(keras.ops.convert_to_numpy(dense(x)),
    ...                  model.predict(x, verbose=0), atol=1e-5))
    True

    References:
        - [Shazeer et al., 2017](https://arxiv.org/abs/1701.06538), sparsely
          gated mixtures of experts.
        - [Lepikhin et al., 2020](https://arxiv.org/abs/2006.16668), GShard:
          capacity and einsum dispatch.
        - [Fedus, Zoph and Shazeer, 2021](https://arxiv.org/abs/2101.03961),
          Switch Transformer.
        - [Jiang et al., 2024](https://arxiv.org/abs/2401.04088), Mixtral.
        - [Qwen team, 2024](https://qwenlm.github.io/blog/qwen-moe/),
          Qwen1.5-MoE's shared expert.
    """

    def __init__(
        self,
        num_experts: int,
        hidden_units: int,
        top_k: int = 2,
        capacity_factor: float | None = None,
        dispatch: str = "dropless",
        activation: str | Callable | None = "gelu",
        gated_linear_unit: bool = False,
        use_bias: bool = True,
        shared_expert_units: int | None = None,
        residual: bool = False,
        simplex: str | simplex_maps.SimplexMap | dict = "softmax",
        temperature: float | None = None,
        top_k_order: str = "map_first",
        normalize_top_k: bool = True,
        normalize_router_inputs: bool = False,
        router_jitter: float = 0.0,
        router_noise: float = 0.0,
        load_balancing_coefficient: float = 0.01,
        z_loss_coefficient: float = 0.0,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        router_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        seed: int | None = None,
        **kwargs: Any,
    ):
        num_experts = check_positive_int(num_experts, "num_experts")
        hidden_units = check_positive_int(hidden_units, "hidden_units")
        top_k = check_positive_int(top_k, "top_k")
        check_top_k_fits(top_k, num_experts, "experts")
        if capacity_factor is not None:
            capacity_factor = check_positive_number(capacity_factor, "capacity_factor")
        if not isinstance(dispatch, str) or dispatch not in DISPATCHES:
            error = ValueError if isinstance(dispatch, str) else TypeError
            raise error(
                "Received an invalid value for `dispatch`, expected one of "
                f"{list(DISPATCHES)}. Received: dispatch={dispatch!r}"
            )
        if dispatch == "dropless" and capacity_factor is not None:
            raise ValueError(
                "Received an invalid value for `capacity_factor`: the dropless "
                "dispatch has no capacity. Pass `capacity_factor=None`, or "
                '`dispatch="sparse"` to limit each expert\'s tokens. Received: '
                f"capacity_factor={capacity_factor}, dispatch={dispatch!r}"
            )
        if shared_expert_units is not None:
            shared_expert_units = check_positive_int(
                shared_expert_units, "shared_expert_units"
            )
        router_arguments = check_router_arguments(
            simplex,
            temperature,
            top_k,
            top_k_order,
            normalize_top_k,
            normalize_router_inputs,
            router_jitter,
            router_noise,
            load_balancing_coefficient,
            z_loss_coefficient,
        )
        gated_linear_unit = check_bool(gated_linear_unit, "gated_linear_unit")
        use_bias = check_bool(use_bias, "use_bias")
        residual = check_bool(residual, "residual")
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.hidden_units = hidden_units
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.dispatch = dispatch
        identifiers = keras_identifiers(
            activation=activation,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            router_initializer=router_initializer,
        )
        self.activation = identifiers["activation"]
        self.gated_linear_unit = gated_linear_unit
        self.use_bias = use_bias
        self.shared_expert_units = shared_expert_units
        self.residual = residual
        self.simplex = router_arguments["simplex"]
        self.temperature = router_arguments["temperature"]
        self.top_k_order = top_k_order
        self.normalize_top_k = router_arguments["normalize_top_k"]
        self.normalize_router_inputs = router_arguments["normalize_router_inputs"]
        self.router_jitter = router_arguments["router_jitter"]
        self.router_noise = router_arguments["router_noise"]
        self.load_balancing_coefficient = router_arguments["load_balancing_coefficient"]
        self.z_loss_coefficient = router_arguments["z_loss_coefficient"]
        self.kernel_initializer = identifiers["kernel_initializer"]
        self.bias_initializer = identifiers["bias_initializer"]
        self.router_initializer = identifiers["router_initializer"]
        self.seed = check_optional_int(seed, "seed")
        self.supports_masking = True
        self.router = make_router(
            num_experts, router_arguments, self.router_initializer, seed
        )
        expert_arguments = {
            "branches": num_experts,
            "use_bias": use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "per_branch_inputs": True,
            "dtype": self.dtype_policy,
        }
        self.expert_input = ParallelDense(
            hidden_units, name="expert_input", **expert_arguments
        )
        self.expert_gate = None
        if gated_linear_unit:
            self.expert_gate = ParallelDense(
                hidden_units, name="expert_gate", **expert_arguments
            )
        self.expert_output = None  # built once the feature size is known
        self._expert_arguments = expert_arguments
        self.shared_expert = None

    def build(self, input_shape: Shape) -> None:
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "The input of the `MixtureOfExperts` layer needs a batch axis and "
                "a feature axis of known size, shape `(batch, ..., features)`. "
                f"Received: `inputs` of shape {input_shape}"
            )
        if any(size is None for size in input_shape[1:-1]):
            raise ValueError(
                "The axes between the batch and the feature axis of the input of "
                "the `MixtureOfExperts` layer must have known sizes (they form "
                f"the routing group). Received: `inputs` of shape {input_shape}"
            )
        features = input_shape[-1]
        self.router.build(input_shape)
        slots = (None, self.num_experts, None, features)
        self.expert_input.build(slots)
        if self.expert_gate is not None:
            self.expert_gate.build(slots)
        self.expert_output = ParallelDense(
            features, name="expert_output", **self._expert_arguments
        )
        self.expert_output.build((None, self.num_experts, None, self.hidden_units))
        if self.shared_expert_units is not None:
            self.shared_expert = _SharedExpert(
                self.shared_expert_units,
                features,
                activation=self.activation,
                gated_linear_unit=self.gated_linear_unit,
                use_bias=self.use_bias,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                dtype=self.dtype_policy,
                name="shared_expert",
            )
            self.shared_expert.build(input_shape)
        self.routed_assignments = self.add_weight(
            name="routed_assignments",
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
        )
        self.dropped_assignments = self.add_weight(
            name="dropped_assignments",
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
        )

    @property
    def dropped_fraction(self) -> float:
        """The share of the routed assignments dropped for lack of capacity.

        A routed assignment is a token's choice of an expert with a non-zero
        gate. Counted over the training calls since the layer was built or
        `reset_assignment_counts()` was last called; `0.0` before any.
        """
        routed = float(ops.convert_to_numpy(self.routed_assignments))
        dropped = float(ops.convert_to_numpy(self.dropped_assignments))
        return dropped / routed if routed > 0 else 0.0

    def route(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The experts chosen for each token at inference, best first.

        Args:
            inputs: A tensor `(batch, ..., features)`, as the layer takes.

        Returns:
            `(expert_indices, gates)`, two tensors of shape
            `(batch, ..., top_k)`: the int32 indices of each token's experts
            and their float32 gates, before any capacity limit.
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        routing = self.router(inputs, training=False)
        return routing.top_indices, routing.top_gates

    def reset_assignment_counts(self) -> None:
        """Sets `routed_assignments` and `dropped_assignments` back to zero."""
        self.routed_assignments.assign(0.0)
        self.dropped_assignments.assign(0.0)

    def call(
        self,
        inputs: Tensor,
        training: bool | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        shape = tuple(inputs.shape)
        features = shape[-1]
        if features is not None and features != self.router.kernel.shape[0]:
            raise ValueError(
                f"Layer '{self.name}' (`MixtureOfExperts`) was built for "
                f"{self.router.kernel.shape[0]} input features, and its `inputs` "
                f"must keep that last axis. Received: `inputs` of shape {shape}"
            )
        if len(shape) == 2:
            # A batch of single tokens is one routing group.
            tokens = ops.expand_dims(inputs, 0)
            group_mask = None if mask is None else ops.expand_dims(mask, 0)
        else:
            group_size = int(np.prod(shape[1:-1]))
            tokens = ops.reshape(inputs, (-1, group_size, features))
            group_mask = None if mask is None else ops.reshape(mask, (-1, group_size))
        routing = self.router(tokens, training=bool(training), padding_mask=group_mask)
        static = tokens.shape[0] is not None and tokens.shape[1] is not None
        if self.dispatch == "dropless" and static:
            outputs, selected = self._dropless(
                tokens, routing.top_indices, routing.top_gates, group_mask
            )
            if training:
                self.routed_assignments.assign_add(selected)
        else:
            capacity = self._capacity(tokens)
            kept, positions, gates, selected = _assign(
                routing.top_indices,
                routing.top_gates,
                self.num_experts,
                capacity,
                group_mask,
            )
            if training:
                self.routed_assignments.assign_add(selected)
                self.dropped_assignments.assign_add(selected - ops.sum(kept))
            if self.dispatch == "sparse" and isinstance(capacity, int):
                outputs = self._sparse(tokens, kept, positions, gates, capacity)
            else:
                outputs = self._dense(tokens, gates)
        outputs = ops.reshape(outputs, ops.shape(inputs))
        if self.shared_expert is not None:
            outputs = outputs + self.shared_expert(inputs)
        if self.residual:
            outputs = outputs + inputs
        return outputs

    def compute_output_shape(self, input_shape: Shape) -> tuple:
        return tuple(input_shape)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Any:
        return mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "hidden_units": self.hidden_units,
                "top_k": self.top_k,
                "capacity_factor": self.capacity_factor,
                "dispatch": self.dispatch,
                "activation": keras.activations.serialize(self.activation),
                "gated_linear_unit": self.gated_linear_unit,
                "use_bias": self.use_bias,
                "shared_expert_units": self.shared_expert_units,
                "residual": self.residual,
                "simplex": keras.saving.serialize_keras_object(self.simplex),
                "temperature": self.temperature,
                "top_k_order": self.top_k_order,
                "normalize_top_k": self.normalize_top_k,
                "normalize_router_inputs": self.normalize_router_inputs,
                "router_jitter": self.router_jitter,
                "router_noise": self.router_noise,
                "load_balancing_coefficient": self.load_balancing_coefficient,
                "z_loss_coefficient": self.z_loss_coefficient,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "router_initializer": keras.initializers.serialize(
                    self.router_initializer
                ),
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> MixtureOfExperts:
        config = dict(config)
        if "experts" in config and "num_experts" not in config:
            # Configurations saved by keras-tether 0.1 name it `experts`.
            config["num_experts"] = config.pop("experts")
        return super().from_config(config)

    def _capacity(self, tokens: Tensor) -> Any:
        group_size = tokens.shape[1]
        if group_size is None:
            # The batch of a 2-D input may be unknown while tracing: the
            # capacity is then a tensor, which only the dense dispatch can use.
            group_size = ops.shape(tokens)[1]
            if self.capacity_factor is None:
                return group_size
            share = ops.ceil(
                ops.cast(group_size, "float32")
                * (self.capacity_factor * self.top_k / self.num_experts)
            )
            return ops.minimum(group_size, ops.maximum(1, ops.cast(share, "int32")))
        if self.capacity_factor is None:
            return group_size
        share = self.capacity_factor * group_size * self.top_k / self.num_experts
        return min(group_size, max(1, math.ceil(share)))

    def _experts(self, slots: Tensor) -> Tensor:
        """`(groups, experts, slots, features)` -> the same shape, per expert."""
        return self._expert_outputs(self.expert_input(slots), slots, None)

    def _expert_outputs(
        self, hidden: Tensor, slots: Tensor | None, tokens: Tensor | None
    ) -> Tensor:
        if self.expert_gate is not None:
            if slots is not None:
                gate = self.expert_gate(slots)
            else:
                gate = _every_expert(self.expert_gate, tokens)
            hidden = hidden * self.activation(gate)
        else:
            hidden = self.activation(hidden)
        return self.expert_output(hidden)

    def _sparse(
        self,
        tokens: Tensor,
        kept: Tensor,
        positions: Tensor,
        gates: Tensor,
        capacity: int,
    ) -> Tensor:
        # (groups, tokens, experts, capacity): token t fills slot c of expert e.
        dispatch = ops.expand_dims(kept, -1) * ops.one_hot(
            positions, capacity, dtype="float32"
        )
        combine = dispatch * ops.expand_dims(gates, -1)
        dispatch = ops.cast(dispatch, tokens.dtype)
        slots = ops.einsum("btec,btd->becd", dispatch, tokens)
        results = self._experts(slots)
        combine = ops.cast(combine, results.dtype)
        return ops.einsum("btec,becd->btd", combine, results)

    def _dropless(
        self,
        tokens: Tensor,
        top_indices: Tensor,
        top_gates: Tensor,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Every chosen expert of every token, as grouped products.

        Returns the outputs `(groups, tokens, features)` and the float32
        number of assignments computed.
        """
        features = tokens.shape[-1]
        flat_tokens = ops.reshape(tokens, (-1, features))
        top_indices = ops.reshape(top_indices, (-1, self.top_k))
        top_gates = ops.reshape(top_gates, (-1, self.top_k))
        # A choice is computed when its gate is non-zero and its token is not
        # padding.
        routed = ops.not_equal(top_gates, 0.0)
        if mask is not None:
            kept = ops.reshape(ops.cast(mask, "bool"), (-1, 1))
            routed = ops.logical_and(routed, kept)
        assignments = sort_assignments(top_indices, routed, self.num_experts)
        layout = assignments.layout
        padded = ops.take(flat_tokens, assignments.slot_tokens, axis=0)
        hidden = self._grouped(self.expert_input, padded, layout)
        if self.expert_gate is not None:
            gate = self._grouped(self.expert_gate, padded, layout)
            hidden = hidden * self.activation(gate)
        else:
            hidden = self.activation(hidden)
        results = self._grouped(self.expert_output, hidden, layout)
        gates = ops.where(routed, top_gates, 0.0)
        outputs = combine(results, assignments, gates)
        outputs = ops.reshape(outputs, ops.shape(tokens))
        return outputs, ops.sum(ops.cast(routed, "float32"))

    def _grouped(self, layer: Any, padded: Tensor, layout: Any) -> Tensor:
        return tiled_product(padded, layer.kernel, layout, bias=layer.bias)

    def _dense(self, tokens: Tensor, gates: Tensor) -> Tensor:
        hidden = _every_expert(self.expert_input, tokens)
        results = self._expert_outputs(hidden, None, tokens)
        return ops.einsum("bte,betd->btd", ops.cast(gates, results.dtype), results)


def _every_expert(layer: Any, tokens: Tensor) -> Tensor:
    """Applies every branch of a stacked dense layer to every token.

    `(groups, tokens, features)` -> `(groups, experts, tokens, units)`,
    reading the stacked kernel once instead of copying the tokens per expert.
    """
    outputs = ops.einsum("btd,edh->beth", tokens, layer.kernel)
    if layer.bias is not None:
        outputs = outputs + layer.bias[None, :, None, :]
    return outputs


def _assign(
    top_indices: Tensor,
    top_gates: Tensor,
    num_experts: int,
    capacity: Any,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each token's slot in each expert under the capacity limit.

    Returns float32 `kept` `(groups, tokens, experts)` (1 where the token is
    computed by the expert), int32 `positions` (its slot there), float32
    `gates` (its gate there, 0 where not kept) and the float32 number of
    assignments asked for (before the capacity limit). A choice whose gate
    is exactly zero asks for nothing: it takes no slot and is not counted.
    """
    selected = ops.one_hot(top_indices, num_experts, dtype="int32")  # (g, t, k, e)
    selected = selected * ops.cast(ops.not_equal(top_gates, 0.0), "int32")[..., None]
    if mask is not None:
        selected = selected * ops.cast(mask, "int32")[:, :, None, None]
    # First choices take slots before second choices (GShard): count the
    # assignments in (choice, token) order.
    by_choice = ops.transpose(selected, (0, 2, 1, 3))
    flat = ops.reshape(by_choice, (ops.shape(by_choice)[0], -1, num_experts))
    positions = ops.reshape(ops.cumsum(flat, axis=1) - flat, ops.shape(by_choice))
    positions = ops.transpose(positions, (0, 2, 1, 3))  # (g, t, k, e)
    kept_choice = selected * ops.cast(positions < capacity, "int32")
    kept = ops.cast(ops.sum(kept_choice, axis=2), "float32")
    positions = ops.sum(kept_choice * positions, axis=2)
    gates = ops.sum(
        ops.cast(kept_choice, "float32") * ops.expand_dims(top_gates, -1), axis=2
    )
    return kept, positions, gates, ops.cast(ops.sum(selected), "float32")


class _SharedExpert(keras.layers.Layer):
    """A feed-forward expert every token uses, scaled by a sigmoid gate."""

    def __init__(
        self,
        hidden_units: int,
        features: int,
        activation: Callable,
        gated_linear_unit: bool,
        use_bias: bool,
        kernel_initializer: Any,
        bias_initializer: Any,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        dense = {
            "use_bias": use_bias,
            "kernel_initializer": kernel_initializer,
            "bias_initializer": bias_initializer,
            "dtype": self.dtype_policy,
        }
        self.activation = activation
        self.input_projection = keras.layers.Dense(hidden_units, name="input", **dense)
        self.gate_projection = None
        if gated_linear_unit:
            self.gate_projection = keras.layers.Dense(
                hidden_units, name="gate", **dense
            )
        self.output_projection = keras.layers.Dense(features, name="output", **dense)
        self.expert_gate = keras.layers.Dense(
            1, use_bias=False, name="expert_gate", dtype=self.dtype_policy
        )

    def build(self, input_shape: Shape) -> None:
        self.input_projection.build(input_shape)
        if self.gate_projection is not None:
            self.gate_projection.build(input_shape)
        hidden_shape = tuple(input_shape[:-1]) + (self.input_projection.units,)
        self.output_projection.build(hidden_shape)
        self.expert_gate.build(input_shape)

    def call(self, inputs: Tensor) -> Tensor:
        hidden = self.input_projection(inputs)
        if self.gate_projection is not None:
            hidden = hidden * self.activation(self.gate_projection(inputs))
        else:
            hidden = self.activation(hidden)
        gate = ops.sigmoid(self.expert_gate(inputs))
        return gate * self.output_projection(hidden)
