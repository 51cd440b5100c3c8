"""Expert parallelism: `MixtureOfExperts` with its expert axis sharded (JAX).

The devices are virtual CPU devices, which JAX creates only if
`XLA_FLAGS=--xla_force_host_platform_device_count=8` is set before it is
imported, so the check runs in a fresh process.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np
    from keras_tether.distribution import branch_layout_map
    from keras_tether.layers import MixtureOfExperts

    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 6)).astype("float32")
    y = rng.normal(size=(16, 8, 6)).astype("float32")

    def make_model(dispatch, capacity_factor):
        inputs = keras.Input(shape=(8, 6))
        moe = MixtureOfExperts(
            num_experts=8,
            hidden_units=4,
            top_k=2,
            capacity_factor=capacity_factor,
            dispatch=dispatch,
            z_loss_coefficient=0.01,
            name="moe",
        )
        return keras.Model(inputs, moe(inputs), name="tokens")

    def train(model, initial):
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        before = model.predict(x, batch_size=16, verbose=0)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return before, [np.asarray(w) for w in model.get_weights()]

    for dispatch, capacity_factor in [("sparse", 1.0), ("dropless", None)]:
        keras.utils.set_random_seed(1)
        reference_model = make_model(dispatch, capacity_factor)
        initial = reference_model.get_weights()
        reference_before, reference = train(reference_model, initial)
        dropped = reference_model.get_layer("moe").dropped_fraction
        assert (dropped > 0) == (dispatch == "sparse"), dropped

        for shape in [(1, 2), (1, 4), (1, 8), (2, 4)]:
            mesh = keras.distribution.DeviceMesh(
                shape,
                ["batch", "model"],
                devices=jax.devices()[: shape[0] * shape[1]],
            )
            layout_map = branch_layout_map(reference_model, mesh)
            assert len(layout_map) == 4, list(layout_map)  # 2 kernels, 2 biases
            distribution = keras.distribution.ModelParallel(
                layout_map=layout_map, batch_dim_name="batch"
            )
            with distribution.scope():
                model = make_model(dispatch, capacity_factor)
                layer = model.get_layer("moe")
                for variable in (layer.expert_input.kernel, layer.expert_output.bias):
                    spec = tuple(variable.value.sharding.spec)
                    assert spec[0] == "model", (variable.path, spec)
                before, weights = train(model, initial)
                np.testing.assert_allclose(before, reference_before, atol=1e-5)
                for got, want in zip(weights, reference, strict=True):
                    np.testing.assert_allclose(got, want, atol=1e-5)
                assert abs(layer.dropped_fraction - dropped) < 1e-7
            print("ok", dispatch, shape)
    """
)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="virtual devices are a JAX check"
)
def test_sharded_experts_train_like_one_device():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src")]
            + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("ok") == 8
