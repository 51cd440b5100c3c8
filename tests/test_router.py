"""The shared router against NumPy formulas of Switch, Mixtral and ST-MoE."""

import keras
import numpy as np
import pytest

from keras_tether import simplex
from keras_tether.layers._router import Router, check_router_arguments


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def np_softmax(z, temperature=1.0):
    z = np.asarray(z, "float64") / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_top_k_indices(values, k):
    # Stable: among equal values the lower index comes first.
    return np.argsort(-values, axis=-1, kind="stable")[..., :k]


def np_mixtral_gates(logits, k):
    """Mixtral: softmax over all experts, keep the k largest, renormalize."""
    probabilities = np_softmax(logits)
    gates = np.zeros_like(probabilities)
    for t in range(len(logits)):
        chosen = np_top_k_indices(probabilities[t], k)
        gates[t, chosen] = probabilities[t, chosen] / probabilities[t, chosen].sum()
    return gates


def np_gpt_oss_gates(logits, k):
    """Top-k of the logits first, then a softmax over the k kept logits."""
    gates = np.zeros_like(logits, dtype="float64")
    for t in range(len(logits)):
        chosen = np_top_k_indices(logits[t], k)
        gates[t, chosen] = np_softmax(logits[t, chosen])
    return gates


def np_switch_balance_loss(logits, k, mask=None):
    """Switch Transformer's auxiliary loss, top-k assignments counted 1/k each."""
    num_experts = logits.shape[-1]
    probabilities = np_softmax(logits)
    keep = np.ones(len(logits), bool) if mask is None else np.asarray(mask, bool)
    counts = np.zeros(num_experts)
    for t in np.flatnonzero(keep):
        for e in np_top_k_indices(probabilities[t], k):
            counts[e] += 1.0 / k
    fraction = counts / keep.sum()
    mean_probability = probabilities[keep].mean(axis=0)
    return num_experts * float(np.dot(fraction, mean_probability))


def np_z_loss(logits, mask=None):
    keep = np.ones(len(logits), bool) if mask is None else np.asarray(mask, bool)
    z = np.asarray(logits, "float64")[keep]
    log_partition = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return float(np.mean(log_partition**2))


def make_router(num_experts=5, top_k=2, **overrides):
    arguments = check_router_arguments(
        overrides.pop("simplex", "softmax"),
        overrides.pop("temperature", None),
        top_k,
        overrides.pop("top_k_order", "map_first"),
        overrides.pop("normalize_top_k", True),
        False,
        overrides.pop("router_jitter", 0.0),
        overrides.pop("router_noise", 0.0),
        overrides.pop("load_balancing_coefficient", 0.0),
        overrides.pop("z_loss_coefficient", 0.0),
    )
    arguments.pop("temperature")
    return Router(
        num_experts,
        kernel_initializer="glorot_uniform",
        seed=overrides.pop("seed", 3),
        **arguments,
        **overrides,
    )


def routed(router, x, kernel, training=False, mask=None):
    router.build(x.shape)
    router.kernel.assign(kernel)
    return router(x, training=training, padding_mask=mask)


rng = np.random.default_rng(0)
X = rng.normal(size=(12, 4)).astype("float32")
KERNEL = rng.normal(size=(4, 5)).astype("float32")
LOGITS = X.astype("float64") @ KERNEL


@pytest.mark.parametrize("k", [1, 2, 3])
def test_map_first_top_k_is_mixtral(k):
    routing = routed(make_router(top_k=k), X, KERNEL)
    gates = to_numpy(routing.gates)
    np.testing.assert_allclose(gates, np_mixtral_gates(LOGITS, k), atol=1e-5)
    assert ((gates > 0).sum(-1) == k).all()
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-6)
    indices = to_numpy(routing.top_indices)
    np.testing.assert_array_equal(indices, np_top_k_indices(LOGITS, k))
    np.testing.assert_allclose(
        to_numpy(routing.top_gates),
        np.take_along_axis(np_mixtral_gates(LOGITS, k), indices, -1),
        atol=1e-5,
    )


def test_top_k_first_is_softmax_over_the_kept_logits():
    routing = routed(make_router(top_k=3, top_k_order="top_k_first"), X, KERNEL)
    np.testing.assert_allclose(
        to_numpy(routing.gates), np_gpt_oss_gates(LOGITS, 3), atol=1e-5
    )


def test_unnormalized_top_k_keeps_the_router_probabilities():
    # Switch (k = 1) and Qwen-MoE without `norm_topk_prob`: the raw probability.
    routing = routed(make_router(top_k=1, normalize_top_k=False), X, KERNEL)
    probabilities = np_softmax(LOGITS)
    expected = np.where(
        np.arange(5) == probabilities.argmax(-1)[:, None], probabilities, 0.0
    )
    np.testing.assert_allclose(to_numpy(routing.gates), expected, atol=1e-6)


def test_temperature_divides_the_logits_before_the_top_k():
    routing = routed(make_router(top_k=None, temperature=0.5), X, KERNEL)
    np.testing.assert_allclose(
        to_numpy(routing.gates), np_softmax(LOGITS, 0.5), atol=1e-5
    )


def test_sparsemax_without_top_k_gives_exact_zeros():
    routing = routed(make_router(top_k=None, simplex="sparsemax"), X * 3, KERNEL)
    gates = to_numpy(routing.gates)
    expected = to_numpy(simplex.sparsemax(LOGITS * 3))
    np.testing.assert_allclose(gates, expected, atol=1e-5)
    assert (gates == 0).any()


@pytest.mark.parametrize("k", [1, 2])
def test_load_balancing_loss_is_switch(k):
    router = make_router(top_k=k, load_balancing_coefficient=0.02)
    routed(router, X, KERNEL, training=True)
    (loss,) = router.losses
    expected = 0.02 * np_switch_balance_loss(LOGITS, k)
    np.testing.assert_allclose(float(to_numpy(loss)), expected, rtol=1e-5)


def test_load_balancing_loss_is_one_for_balanced_routing():
    # Two experts, tokens alternating between them with mirrored probabilities.
    x = np.array([[1.0], [-1.0]] * 4, "float32")
    router = make_router(num_experts=2, top_k=1, load_balancing_coefficient=1.0)
    routed(router, x, np.array([[1.0, -1.0]], "float32"), training=True)
    np.testing.assert_allclose(float(to_numpy(router.losses[0])), 1.0, rtol=1e-6)


def test_losses_leave_out_padding():
    mask = np.array([True] * 7 + [False] * 5)
    router = make_router(
        top_k=2, load_balancing_coefficient=0.5, z_loss_coefficient=0.1
    )
    routed(router, X, KERNEL, training=True, mask=mask)
    balance, z_loss = (float(to_numpy(loss)) for loss in router.losses)
    np.testing.assert_allclose(
        balance, 0.5 * np_switch_balance_loss(LOGITS, 2, mask), rtol=1e-5
    )
    np.testing.assert_allclose(z_loss, 0.1 * np_z_loss(LOGITS, mask), rtol=1e-5)
    # The same numbers as routing only the kept tokens.
    alone = make_router(top_k=2, load_balancing_coefficient=0.5, z_loss_coefficient=0.1)
    routed(alone, X[:7], KERNEL, training=True)
    np.testing.assert_allclose(
        [balance, z_loss], [float(to_numpy(v)) for v in alone.losses], rtol=1e-5
    )


def test_losses_only_in_training():
    router = make_router(top_k=2, load_balancing_coefficient=0.5, z_loss_coefficient=1)
    routed(router, X, KERNEL, training=False)
    assert router.losses == []


def test_jitter_and_noise_only_in_training():
    clean = to_numpy(routed(make_router(top_k=None), X, KERNEL).gates)
    for option in ({"router_jitter": 0.5}, {"router_noise": 1.0}):
        router = make_router(top_k=None, **option)
        inference = to_numpy(routed(router, X, KERNEL).gates)
        np.testing.assert_allclose(inference, clean, atol=1e-6)
        noisy = to_numpy(router(X, training=True).gates)
        assert np.abs(noisy - clean).max() > 1e-3
        np.testing.assert_allclose(noisy.sum(-1), 1.0, atol=1e-5)


def test_noisy_top_k_selects_on_the_noisy_logits():
    router = make_router(top_k=1, router_noise=100.0)
    routed(router, X, KERNEL)
    chosen = to_numpy(router(X, training=True).top_indices)[:, 0]
    # With noise this large the choice is nearly uniform, not the clean argmax.
    assert (chosen != LOGITS.argmax(-1)).any()
