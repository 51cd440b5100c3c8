"""An `Ensemble` on several devices: its branch axis sharded (JAX), and
data parallel with `tf.distribute.MirroredStrategy` (TensorFlow).

The devices are virtual CPU devices, which JAX creates only if
`XLA_FLAGS=--xla_force_host_platform_device_count=8` is set before it is
imported, and TensorFlow only if its logical devices are configured before it
initializes, so each check runs in a fresh process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
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


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import numpy as np
    from keras_tether.layers import Ensemble

    BRANCHES = 4
    BATCH = 16
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * BATCH, 6)).astype("float32")
    y = rng.normal(size=(4 * BATCH, BRANCHES, 3)).astype("float32")
    # MirroredStrategy hands each replica its half of every batch, and
    # batch normalization normalizes by the statistics of the batch it sees.
    # With every batch made of one half twice, each replica's half has the
    # whole batch's statistics, so the run must equal the one-device run.
    halves_x = x.reshape(-1, 1, BATCH // 2, 6)[:, [0, 0]]
    halves_y = y.reshape(-1, 1, BATCH // 2, BRANCHES, 3)[:, [0, 0]]
    twice_x = halves_x.reshape(-1, 6)
    twice_y = halves_y.reshape(-1, BRANCHES, 3)

    def template(synchronized=False):
        return keras.Sequential([
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.BatchNormalization(momentum=0.5, synchronized=synchronized),
            keras.layers.Dense(3),
        ], name="member")

    def ensemble_model(synchronized=False):
        inputs = keras.Input((6,))
        members = Ensemble(
            template(synchronized), branches=BRANCHES, seed=0, name="members"
        )
        return keras.Model(inputs, members(inputs))

    def separate_model(copies):
        inputs = keras.Input((6,))
        outputs = keras.ops.stack([copy(inputs) for copy in copies], axis=1)
        return keras.Model(inputs, outputs)

    def train(model, x, y):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)

    def branch_weights(model):
        # Every branch's weights, as separate models hold them.
        return [
            keras.ops.convert_to_numpy(w)
            for copy in model.get_layer("members").to_models()
            for w in copy.weights
        ]

    def difference(a, b):
        return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True))

    start_model = ensemble_model()
    start = start_model.get_weights()
    start_branches = branch_weights(start_model)
    one_device = ensemble_model()
    one_device.set_weights(start)
    train(one_device, twice_x, twice_y)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = ensemble_model()
        mirrored.set_weights(start)
        copies = start_model.get_layer("members").to_models()
        separate = separate_model(copies)
    train(mirrored, twice_x, twice_y)
    mirrored_branches = branch_weights(mirrored)
    stacks = {w.name.rsplit("_", 1)[0]: w for w in mirrored.weights}
    report = {
        "replicas": strategy.num_replicas_in_sync,
        "distributed": [
            type(w.value).__name__ for w in mirrored.get_layer("members").weights
        ],
        "difference": difference(branch_weights(one_device), mirrored_branches),
        "moved": difference(mirrored_branches, start_branches),
        "moving_mean": keras.ops.convert_to_numpy(stacks["moving_mean"]).tolist(),
        "moving_variance": keras.ops.convert_to_numpy(
            stacks["moving_variance"]
        ).tolist(),
    }
    # On any batches (halves that differ), each replica normalizes by its own
    # half, as batch normalization does in any Keras model under the
    # strategy: the ensemble must train as its branches built separately do.
    with strategy.scope():
        mirrored = ensemble_model()
        mirrored.set_weights(start)
    train(mirrored, x, y)
    train(separate, x, y)
    mirrored_plain = branch_weights(mirrored)
    report["separate_difference"] = difference(
        mirrored_plain,
        [keras.ops.convert_to_numpy(w) for copy in copies for w in copy.weights],
    )
    # A synchronized batch normalization normalizes every replica by the
    # whole batch's statistics: on any batches, the one-device run again.
    synchronized_one_device = ensemble_model(synchronized=True)
    synchronized_one_device.set_weights(start)
    train(synchronized_one_device, x, y)
    # On one device there is nothing to synchronize: the branches, run one
    # after another, train as the vectorized ones do.
    plain_one_device = ensemble_model()
    plain_one_device.set_weights(start)
    train(plain_one_device, x, y)
    report["synchronized_one_device_difference"] = difference(
        branch_weights(synchronized_one_device), branch_weights(plain_one_device)
    )
    with strategy.scope():
        mirrored = ensemble_model(synchronized=True)
        mirrored.set_weights(start)
    train(mirrored, x, y)
    report["synchronized_difference"] = difference(
        branch_weights(synchronized_one_device), branch_weights(mirrored)
    )
    report["synchronized_moved"] = difference(
        branch_weights(mirrored), start_branches
    )
    # Without synchronizing, each replica's statistics are its half's: the
    # batches here are ones on which that makes a difference.
    report["unsynchronized_difference"] = difference(
        branch_weights(synchronized_one_device), mirrored_plain
    )
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute on TensorFlow"
)
def test_mirrored_strategy_trains_as_on_one_device():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT"))
    report = json.loads(line[len("REPORT") :])
    assert report["replicas"] == 2
    # Every stacked variable is one variable mirrored on both devices.
    assert set(report["distributed"]) == {"MirroredVariable"}, report
    assert report["moved"] > 1e-2, report
    assert report["difference"] < 1e-5, report
    assert report["separate_difference"] < 1e-5, report
    assert report["synchronized_moved"] > 1e-2, report
    assert report["synchronized_difference"] < 1e-5, report
    assert report["synchronized_one_device_difference"] < 1e-5, report
    assert report["unsynchronized_difference"] > 1e-3, report
    # Each branch's moving statistics left their initial 0 and 1, and each
    # branch has its own.
    moving_mean = np.array(report["moving_mean"])
    moving_variance = np.array(report["moving_variance"])
    assert moving_mean.shape == moving_variance.shape == (4, 5)
    assert np.all(np.abs(moving_mean) > 1e-4), moving_mean
    assert np.all(np.abs(moving_variance - 1) > 1e-4), moving_variance
    for a in range(4):
        for b in range(a):
            assert np.max(np.abs(moving_mean[a] - moving_mean[b])) > 1e-3
