"""The router shared by `GatedAverage` and `MixtureOfExperts`.

A router turns a context vector into per-example gates over `N` experts (or
branches): a `Dense` projection to `N` logits, computed in float32 whatever
the dtype policy, mapped onto the simplex by a map of `keras_tether.simplex`,
optionally restricted to the `k` largest. In training it can perturb the
routing (Switch's multiplicative jitter, noisy top-k) and adds the auxiliary
losses of sparse mixtures: the Switch load-balancing loss and the router
z-loss, both averaged over the tokens that the padding mask keeps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from keras_tether import simplex as simplex_maps
from keras_tether._types import Shape, Tensor
from keras_tether._validation import (
    check_bool,
    check_non_negative_number,
    check_positive_int,
    check_positive_number,
)

TOP_K_ORDERS = ("map_first", "top_k_first")


class Routing(NamedTuple):
    """What a router returns for a batch of contexts of shape `(..., d)`."""

    gates: Tensor
    """Float32 `(..., N)`: each token's gates, zero outside its selection."""
    top_indices: Tensor | None
    """Int32 `(..., k)`: the selected experts, best first (`None` without k)."""
    top_gates: Tensor | None
    """Float32 `(..., k)`: the gates of `top_indices` (`None` without k)."""


def check_router_arguments(
    simplex: Any,
    temperature: Any,
    top_k: Any,
    top_k_order: Any,
    normalize_top_k: Any,
    normalize_router_inputs: Any,
    router_jitter: Any,
    router_noise: Any,
    load_balancing_coefficient: Any,
    z_loss_coefficient: Any,
) -> dict[str, Any]:
    """Validates the router arguments of a layer; returns them normalized."""
    if top_k is not None:
        top_k = check_positive_int(top_k, "top_k")
    if not isinstance(top_k_order, str) or top_k_order not in TOP_K_ORDERS:
        error = TypeError if not isinstance(top_k_order, str) else ValueError
        raise error(
            "Received an invalid value for `top_k_order`, expected one of "
            f"{list(TOP_K_ORDERS)}. Received: top_k_order={top_k_order!r}"
        )
    if temperature is not None:
        temperature = check_positive_number(temperature, "temperature")
    jitter = check_non_negative_number(router_jitter, "router_jitter")
    if jitter >= 1:
        raise ValueError(
            "Received an invalid value for `router_jitter`, expected a number "
            f"in [0, 1). Received: router_jitter={router_jitter!r}"
        )
    return {
        "simplex": simplex_maps.get(simplex, temperature),
        "temperature": temperature,
        "top_k": top_k,
        "top_k_order": top_k_order,
        "normalize_top_k": check_bool(normalize_top_k, "normalize_top_k"),
        "normalize_router_inputs": check_bool(
            normalize_router_inputs, "normalize_router_inputs"
        ),
        "router_jitter": jitter,
        "router_noise": check_non_negative_number(router_noise, "router_noise"),
        "load_balancing_coefficient": check_non_negative_number(
            load_balancing_coefficient, "load_balancing_coefficient"
        ),
        "z_loss_coefficient": check_non_negative_number(
            z_loss_coefficient, "z_loss_coefficient"
        ),
    }


def make_router(
    num_experts: int, arguments: dict[str, Any], kernel_initializer: Any, seed: Any
) -> Router:
    """The router of a layer, from what `check_router_arguments` returned."""
    # The temperature is already part of the simplex map.
    options = {key: value for key, value in arguments.items() if key != "temperature"}
    return Router(
        num_experts,
        **options,
        kernel_initializer=kernel_initializer,
        seed=seed,
        name="router",
    )


def check_top_k_fits(top_k: int | None, num_experts: int, what: str) -> None:
    """Raises `ValueError` if `top_k` asks for more experts than there are."""
    if top_k is not None and top_k > num_experts:
        raise ValueError(
            "Received an invalid value for `top_k`, expected at most the "
            f"number of {what} ({num_experts}). Received: top_k={top_k}"
        )


class Router(keras.layers.Layer):
    """Context `(..., d)` -> gates `(..., N)`; see the module docstring.

    The layer always computes in float32: routing decisions and the
    auxiliary losses are where half precision hurts most (Switch
    Transformer, "selective precision").
    """

    def __init__(
        self,
        num_experts: int,
        *,
        simplex: Any,
        top_k: int | None,
        top_k_order: str,
        normalize_top_k: bool,
        normalize_router_inputs: bool,
        router_jitter: float,
        router_noise: float,
        load_balancing_coefficient: float,
        z_loss_coefficient: float,
        kernel_initializer: Any,
        seed: int | None,
        **kwargs: Any,
    ):
        super().__init__(dtype="float32", **kwargs)
        self.num_experts = num_experts
        self.simplex = simplex
        self.top_k = top_k
        self.top_k_order = top_k_order
        self.normalize_top_k = normalize_top_k
        self.router_jitter = router_jitter
        self.router_noise = router_noise
        self.load_balancing_coefficient = load_balancing_coefficient
        self.z_loss_coefficient = z_loss_coefficient
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.normalization = None
        if normalize_router_inputs:
            self.normalization = keras.layers.LayerNormalization(
                dtype="float32", name="normalization"
            )
        self.seed_generator = None
        if (
            router_jitter > 0
            or router_noise > 0
            or isinstance(simplex, simplex_maps.GumbelSoftmax)
        ):
            self.seed_generator = keras.random.SeedGenerator(seed)
        # The padding mask arrives as `padding_mask`; the context's own Keras
        # mask is accepted and not propagated (the gates carry none).
        self.supports_masking = True

    def build(self, context_shape: Shape) -> None:
        if self.normalization is not None:
            self.normalization.build(context_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(context_shape[-1], self.num_experts),
            initializer=self.kernel_initializer,
        )

    def call(
        self,
        context: Tensor,
        training: bool = False,
        padding_mask: Tensor | None = None,
    ) -> Routing:
        x = ops.cast(context, "float32")
        if self.normalization is not None:
            x = self.normalization(x)
        if training and self.router_jitter > 0:
            x = x * keras.random.uniform(
                ops.shape(x),
                minval=1.0 - self.router_jitter,
                maxval=1.0 + self.router_jitter,
                seed=self.seed_generator,
            )
        logits = ops.matmul(x, self.kernel)
        clean_logits = logits
        if training and self.router_noise > 0:
            logits = logits + self.router_noise * keras.random.normal(
                ops.shape(logits), seed=self.seed_generator
            )
        probabilities = self._map(logits, training)
        top_indices = top_gates = None
        if self.top_k is None:
            gates = probabilities
            selected = ops.cast(gates > 0, "float32")
        elif self.top_k_order == "map_first":
            top_gates, top_indices = ops.top_k(probabilities, self.top_k)
            if self.normalize_top_k:
                top_gates = top_gates / ops.sum(top_gates, axis=-1, keepdims=True)
            gates = _scatter_top_k(top_gates, top_indices, self.num_experts)
            selected = _scatter_top_k(
                ops.ones_like(top_gates), top_indices, self.num_experts
            )
        else:
            _, top_indices = ops.top_k(logits, self.top_k)
            selected = _scatter_top_k(
                ops.ones_like(logits[..., : self.top_k]), top_indices, self.num_experts
            )
            gates = self._map(logits, training, mask=selected > 0)
            top_gates = ops.take_along_axis(gates, top_indices, axis=-1)
        if top_indices is not None:
            top_indices = ops.cast(top_indices, "int32")
        if training:
            self._add_auxiliary_losses(
                clean_logits, probabilities, selected, padding_mask
            )
        return Routing(gates, top_indices, top_gates)

    def compute_mask(self, context: Tensor, mask: Tensor | None = None) -> None:
        return None

    def _map(self, logits: Tensor, training: bool, mask: Tensor | None = None):
        return self.simplex(
            logits, axis=-1, training=training, seed=self.seed_generator, mask=mask
        )

    def _add_auxiliary_losses(
        self,
        logits: Tensor,
        probabilities: Tensor,
        selected: Tensor,
        mask: Tensor | None,
    ) -> None:
        if self.load_balancing_coefficient > 0:
            # f_i: the share of the routed assignments that go to expert i
            # (each token's selection counts 1 in all); P_i: the mean router
            # probability of expert i. Balanced routing gives f = P = 1 / N.
            shares = selected / ops.maximum(
                ops.sum(selected, axis=-1, keepdims=True), 1.0
            )
            fraction = token_mean(shares, mask)
            probability = token_mean(probabilities, mask)
            balance = self.num_experts * ops.sum(fraction * probability)
            self.add_loss(self.load_balancing_coefficient * balance)
        if self.z_loss_coefficient > 0:
            log_partition = ops.logsumexp(logits, axis=-1, keepdims=True)
            z_loss = ops.sum(token_mean(ops.square(log_partition), mask))
            self.add_loss(self.z_loss_coefficient * z_loss)


def _scatter_top_k(values: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """`(..., k)` values at `(..., k)` indices -> dense `(..., N)`."""
    one_hot = ops.one_hot(ops.cast(indices, "int32"), num_experts, dtype="float32")
    return ops.sum(one_hot * ops.expand_dims(values, -1), axis=-2)


def token_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `(..., N)` over every axis but the last, over kept tokens."""
    axes = tuple(range(len(values.shape) - 1))
    if mask is None:
        return ops.mean(values, axis=axes)
    weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
    total = ops.sum(values * weights, axis=axes)
    count = ops.sum(ops.broadcast_to(weights, ops.shape(values[..., :1])))
    return total / ops.maximum(count, 1.0)
