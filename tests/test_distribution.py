"""`keras_tether.distribution`: sharding branches with Keras' distribution engine.

The multi-device runs need their devices set up before the backend starts, so
they run in a subprocess: 8 virtual CPU devices on JAX, 2 logical CPUs with
`tf.distribute.MirroredStrategy` on TensorFlow.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_tether.distribution import branch_layout_map
from keras_tether.layers import ParallelDense, WeightedAverage

BACKEND = keras.backend.backend()

MODEL = """
import keras
import numpy as np
from keras_tether.layers import ParallelDense, WeightedAverage

def make_model():
    inputs = keras.Input((6,))
    hidden = ParallelDense(5, 8, activation="tanh", name="hidden")(inputs)
    heads = ParallelDense(3, 8, per_branch_inputs=True, name="heads")(hidden)
    mixed = WeightedAverage(branch_axis=1, feature_axis=-1, name="mix")(heads)
    return keras.Model(inputs, mixed, name="ensemble")

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 6)).astype("float32")
y = rng.normal(size=(32, 3)).astype("float32")

def train(model):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.get_weights()]

def max_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True))
"""

JAX_SCRIPT = (
    """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import json, math
"""
    + MODEL
    + """
from keras_tether.distribution import branch_layout_map

keras.utils.set_random_seed(1)
template = make_model()
start = template.get_weights()
single = keras.models.clone_model(template)
single.set_weights(start)
reference = train(single)

report = {}
for shape in [(1, 2), (1, 4), (1, 8), (2, 4)]:
    devices = keras.distribution.list_devices()[: math.prod(shape)]
    mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)
    layout_map = branch_layout_map(template, mesh)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    with distribution.scope():
        model = keras.models.clone_model(template)
        model.set_weights(start)
        weights = train(model)
    kernel = model.get_layer("hidden").kernel.value
    logits = model.get_layer("mix").logits.value
    report[str(shape)] = {
        "keys": sorted(layout_map),
        "kernel_spec": [str(a) for a in kernel.sharding.spec],
        "kernel_shard": list(kernel.addressable_shards[0].data.shape),
        "kernel_devices": len(kernel.sharding.device_set),
        "logits_shard": list(logits.addressable_shards[0].data.shape),
        "difference": max_difference(weights, reference),
        "moved": max_difference(weights, start),
    }
print("REPORT" + json.dumps(report))
"""
)

TF_SCRIPT = (
    """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
"""
    + MODEL
    + """
keras.utils.set_random_seed(1)
template = make_model()
start = template.get_weights()
single = keras.models.clone_model(template)
single.set_weights(start)
reference = train(single)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = make_model()
    model.set_weights(start)
    weights = train(model)
report = {
    "replicas": strategy.num_replicas_in_sync,
    "difference": max_difference(weights, reference),
    "moved": max_difference(weights, start),
}
print("REPORT" + json.dumps(report))
"""
)


def _run(script):
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's ModelParallel on virtual CPUs")
def test_branches_are_sharded_and_training_matches_one_device():
    report = _run(JAX_SCRIPT)
    for shape, result in report.items():
        model_devices = int(shape.strip("()").split(",")[1])
        assert result["kernel_spec"][0] == "model", (shape, result)
        assert result["kernel_shard"] == [8 // model_devices, 6, 5], (shape, result)
        assert result["logits_shard"] == [8 // model_devices, 3], (shape, result)
        assert result["kernel_devices"] == model_devices * (
            2 if shape == "(2, 4)" else 1
        )
        assert result["moved"] > 1e-3, (shape, result)
        assert result["difference"] < 1e-5, (shape, result)
    assert report["(1, 2)"]["keys"] == [
        "heads/bias",
        "heads/kernel",
        "hidden/bias",
        "hidden/kernel",
        "mix/logits",
    ]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute on TensorFlow")
def test_mirrored_strategy_trains_like_one_device():
    report = _run(TF_SCRIPT)
    assert report["replicas"] == 2
    assert report["moved"] > 1e-3
    assert report["difference"] < 1e-5, report


def _mesh(model_devices, batch_devices=1):
    devices = [f"cpu:{i}" for i in range(model_devices * batch_devices)]
    return keras.distribution.DeviceMesh(
        (batch_devices, model_devices), ("batch", "model"), devices
    )


class _Experts(keras.layers.Layer):
    """A mixture-of-experts-like layer that holds ParallelDense sublayers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.up = ParallelDense(8, 4, activation="relu", name="up")
        self.down = ParallelDense(2, 4, per_branch_inputs=True, name="down")

    def build(self, input_shape):
        self.up.build(input_shape)
        self.down.build((input_shape[0], 4, 8))

    def call(self, x):
        return self.down(self.up(x))


def test_nested_branched_layers_are_covered_and_others_left_alone():
    inputs = keras.Input((6,))
    experts = _Experts(name="experts")(inputs)
    mixed = WeightedAverage(branch_axis=1, name="plain_mix")(experts)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(mixed))
    layout_map = branch_layout_map(model, _mesh(2, batch_devices=2))
    assert sorted(layout_map) == [
        "experts/down/bias",
        "experts/down/kernel",
        "experts/up/bias",
        "experts/up/kernel",
    ]
    assert layout_map["experts/up/kernel"].axes == ("model", None, None)
    assert layout_map["experts/up/bias"].axes == ("model", None)
    assert layout_map["out/kernel"] is None  # replicated


def test_lora_weights_are_sharded_with_their_branches():
    layer = ParallelDense(3, 4, lora_rank=2, name="adapted")
    model = keras.Sequential([keras.Input((5,)), layer], name="lora_model")
    layout_map = branch_layout_map(model, _mesh(4), branch_axis_name="model")
    assert layout_map["lora_model/adapted/lora_kernel_a"].axes == (
        "model",
        None,
        None,
    )


def test_refusals_name_the_problem():
    model = keras.Sequential(
        [keras.Input((5,)), ParallelDense(3, 6, name="six")], name="six_branches"
    )
    with pytest.raises(ValueError, match=r"'six'.*6 branches.*4 devices"):
        branch_layout_map(model, _mesh(4))
    with pytest.raises(ValueError, match=r"`branch_axis_name`.*'experts'"):
        branch_layout_map(model, _mesh(2), branch_axis_name="experts")
    with pytest.raises(TypeError, match="DeviceMesh"):
        branch_layout_map(model, "mesh")
    unbuilt = keras.Sequential([ParallelDense(3, 2)])
    with pytest.raises(ValueError, match="before it is built"):
        branch_layout_map(unbuilt, _mesh(2))
    layout_map = branch_layout_map(model, _mesh(3))  # 6 branches on 3 devices
    assert layout_map["six_branches/six/kernel"].axes == ("model", None, None)
