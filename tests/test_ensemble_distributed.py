"""An `Ensemble` with its branch axis sharded over devices (JAX).

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
    from keras_tether.layers import Ensemble

    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 8, 3)).astype("float32")

    def make_model():
        template = keras.Sequential([
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ])
        inputs = keras.Input(shape=(6,))
        ensemble = Ensemble(template, branches=8, seed=0, name="members")
        return keras.Model(inputs, ensemble(inputs), name="ensemble")

    def train(model, initial):
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = model.predict(x, batch_size=16, verbose=0)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return before, [np.asarray(w) for w in model.get_weights()]

    reference_model = make_model()
    initial = reference_model.get_weights()
    reference_before, reference = train(reference_model, initial)

    for shape in [(1, 2), (1, 4), (1, 8), (2, 4)]:
        devices = jax.devices()[: shape[0] * shape[1]]
        mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"], devices=devices)
        layout_map = branch_layout_map(reference_model, mesh)
        # Two kernels, two biases, and the batch norm's four variables.
        assert len(layout_map) == 8, list(layout_map)
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
        with distribution.scope():
            model = make_model()
            for variable in model.get_layer("members").weights:
                spec = tuple(variable.value.sharding.spec)
                assert spec[0] == "model", (variable.path, spec)
                shard = variable.value.addressable_shards[0].data.shape
                assert shard[0] == 8 // shape[1], (variable.path, shard)
            before, weights = train(model, initial)
            np.testing.assert_allclose(before, reference_before, atol=1e-5)
            for got, want in zip(weights, reference, strict=True):
                np.testing.assert_allclose(got, want, atol=1e-5)
        print("ok", shape)
    """
)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the sharding check runs on JAX"
)
def test_branch_axis_sharded_over_devices_trains_as_on_one_device():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("ok") == 4, result.stdout
