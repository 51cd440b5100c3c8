"""`MixtureOfExperts` against keras-hub's Mixtral sparse MoE block."""

import keras
import numpy as np
import pytest

from keras_tether.layers import MixtureOfExperts

mixtral_decoder = pytest.importorskip(
    "keras_hub.src.models.mixtral.mixtral_decoder",
    reason="keras-hub is not installed",
)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("dispatch", ["dense", "sparse", "dropless"])
def test_mixtral_block_on_copied_weights(dispatch):
    hidden, intermediate, experts = 8, 12, 4
    x = np.random.default_rng(0).normal(size=(2, 5, hidden)).astype("float32")
    block = mixtral_decoder.MixtralSparseMoeBlock(
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        num_experts=experts,
        top_k=2,
        router_aux_loss_coef=0.02,
    )
    block.build(x.shape)
    ours = MixtureOfExperts(
        num_experts=experts,
        hidden_units=intermediate,
        top_k=2,
        capacity_factor=None,
        dispatch=dispatch,
        activation="silu",
        gated_linear_unit=True,
        use_bias=False,
        load_balancing_coefficient=0.02,
    )
    ours.build(x.shape)
    bank = block.expert_bank
    ours.router.kernel.assign(block._sparse_feedforward_gate_dense.kernel)
    ours.expert_gate.kernel.assign(bank._expert_feedforward_gate_dense)
    ours.expert_input.kernel.assign(bank._expert_feedforward_intermediate_dense)
    ours.expert_output.kernel.assign(bank._expert_feedforward_output_dense)

    expected, _ = block(x, training=True)
    output = ours(x, training=True)
    np.testing.assert_allclose(to_numpy(output), to_numpy(expected), atol=1e-5)
    (their_loss,) = block.losses
    (our_loss,) = ours.losses
    np.testing.assert_allclose(
        float(to_numpy(our_loss)), float(to_numpy(their_loss)), rtol=1e-5
    )
