"""`keras_tether.regularizers`: where the regularizers live, and old configs."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_tether
from keras_tether.regularizers import EntropyRegularizer

# The config a `WeightedAverage` saved its regularizer with when the class
# was exported from `keras_tether.layers`.
_OLD_CONFIG = {
    "module": "keras_tether.layers._mixture_regularizers",
    "class_name": "EntropyRegularizer",
    "config": {"strength": 0.2, "toward": "uniform"},
    "registered_name": "keras_tether>EntropyRegularizer",
}


def test_exported_from_regularizers_only():
    assert "EntropyRegularizer" in keras_tether.regularizers.__all__
    assert not hasattr(keras_tether.layers, "EntropyRegularizer")
    assert not hasattr(keras_tether, "EntropyRegularizer")
    assert isinstance(EntropyRegularizer(), keras.regularizers.Regularizer)


def test_value_is_the_entropy_worked_out_by_hand():
    weights = np.array([[0.7, 0.5], [0.2, 0.5], [0.1, 0.0]], dtype="float32")
    columns = weights.astype(np.float64)
    entropy = [-sum(w * np.log(w) for w in column if w > 0) for column in columns.T]
    sparse = float(EntropyRegularizer(0.3)(weights))
    uniform = float(EntropyRegularizer(0.3, toward="uniform")(weights))
    np.testing.assert_allclose(sparse, 0.3 * np.mean(entropy), rtol=1e-5)
    np.testing.assert_allclose(
        uniform, 0.3 * np.mean(np.log(3) - np.array(entropy)), rtol=1e-5
    )


def test_a_config_saved_under_the_old_module_loads_in_a_fresh_process():
    script = (
        "import json, sys, keras, keras_tether\n"
        "config = json.loads(sys.argv[1])\n"
        "r = keras.saving.deserialize_keras_object(config, safe_mode=True)\n"
        "print(type(r).__module__, type(r).__name__, json.dumps(r.get_config()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(_OLD_CONFIG)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line == (
        "keras_tether.regularizers._entropy_regularizer EntropyRegularizer "
        '{"strength": 0.2, "toward": "uniform"}'
    )
