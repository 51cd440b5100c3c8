"""A tied kernel sharded by `keras.distribution.ModelParallel` (JAX).

It runs in a subprocess with 8 virtual CPU devices, which JAX must be told of
before it starts.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import json
import keras
import numpy as np
from keras_tether import ties

def train(model, x):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, x, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.get_weights()]

keras.utils.set_random_seed(1)
x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
template = ties.tied_autoencoder(16, [8], activation="tanh")
start = template.get_weights()
single = keras.models.clone_model(template)
single.set_weights(start)
reference = train(single, x)

mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
                                     keras.distribution.list_devices())
layout_map = keras.distribution.LayoutMap(mesh)
layout_map["tied_dense_0/kernel"] = (None, "model")
distribution = keras.distribution.ModelParallel(
    layout_map=layout_map, batch_dim_name="batch"
)
with distribution.scope():
    model = keras.models.clone_model(template)
    model.set_weights(start)
    weights = train(model, x)
kernel = model.get_layer("tied_dense_0").kernel.value
report = {
    "kernel_spec": [str(a) for a in kernel.sharding.spec],
    "kernel_shard": list(kernel.addressable_shards[0].data.shape),
    "difference": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, reference)),
    "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, start)),
    "params": ties.count_params(model),
}
print("REPORT" + json.dumps(report))
"""


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's ModelParallel on virtual CPUs"
)
def test_sharded_tied_kernel_trains_as_on_one_device():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT"))
    report = json.loads(line[len("REPORT") :])
    assert report["kernel_spec"] == ["None", "model"]
    assert report["kernel_shard"] == [16, 2]  # 8 units over 4 devices
    assert report["params"] == 16 * 8 + 8 + 16
    assert report["moved"] > 1e-3
    assert report["difference"] < 1e-5
