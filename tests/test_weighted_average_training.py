"""`WeightedAverage` in training: the seed scenario, real data, data parallelism."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_tether.layers import WeightedAverage

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "seed_mixing.py"


def load_example():
    spec = importlib.util.spec_from_file_location("seed_mixing", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("num_branches", [3, 7])
def test_seed_scenario_learns_weights_that_survive_saving(num_branches):
    model, before, after = load_example().main(
        epochs=2, samples=96, num_branches=num_branches
    )
    mixture = model.get_layer("mixture")
    assert [w.path for w in mixture.trainable_weights] == ["mixture/logits"]
    assert before.shape == after.shape == (num_branches,)
    np.testing.assert_allclose(before, 1 / num_branches, atol=1e-6)
    assert np.abs(after - before).max() > 1e-4, "the weights did not move in fit"
    assert np.all(after >= 0)
    np.testing.assert_allclose(after.sum(), 1.0, atol=1e-6)

    x = [
        np.random.default_rng(i).uniform(size=(5, 100)).astype("float32")
        for i in range(num_branches)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "seed.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    loaded_mixture = loaded.get_layer("mixture")
    assert isinstance(loaded_mixture, WeightedAverage)
    np.testing.assert_array_equal(loaded_mixture.mixture_weights, after)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_noise_branch_loses_its_weight_on_digits():
    # Two branches see the two halves of each 8x8 digit, the third sees
    # Gaussian noise: the mixture should learn to ignore the third.
    keras.utils.set_random_seed(0)
    digits = load_digits()
    images = (digits.data / 16.0).astype("float32")
    noise = np.random.default_rng(0).normal(size=images.shape).astype("float32")
    views = [images[:, :32], images[:, 32:], noise]
    inputs = [keras.Input(shape=(view.shape[1],)) for view in views]
    branches = [keras.layers.Dense(10)(x) for x in inputs]
    mixture = WeightedAverage()
    probabilities = keras.layers.Activation("softmax")(mixture(branches))
    model = keras.Model(inputs, probabilities)
    model.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(views, digits.target, epochs=5, batch_size=256, verbose=0)
    weights = mixture.mixture_weights
    assert history.history["accuracy"][-1] > 0.85
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
    assert weights[2] < 0.25 * min(weights[0], weights[1]), weights


DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json

    import jax
    import keras
    import numpy as np

    from keras_tether.layers import WeightedAverage


    def train(distribution):
        keras.distribution.set_distribution(distribution)
        keras.utils.set_random_seed(0)
        inputs = [keras.Input(shape=(6,)) for _ in range(3)]
        branches = [keras.layers.Dense(4)(x) for x in inputs]
        mixture = WeightedAverage(scale=True, normalize_inputs=True, name="mixture")
        model = keras.Model(inputs, mixture(branches))
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        rng = np.random.default_rng(0)
        x = [rng.normal(size=(64, 6)).astype("float32") for _ in range(3)]
        y = (2.0 * x[0][:, :4] - x[1][:, :4]).astype("float32")
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        return {
            "devices": len(jax.devices()),
            "mixture": mixture.mixture_weights.tolist(),
            "gamma": float(keras.ops.convert_to_numpy(mixture.gamma)),
            "predictions": model.predict(x, verbose=0).tolist(),
        }


    single = train(None)
    devices = keras.distribution.list_devices()
    parallel = train(keras.distribution.DataParallel(devices=devices))
    print(json.dumps({"single": single, "parallel": parallel}))
    """
)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution runs on JAX"
)
def test_data_parallel_training_matches_one_device():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        # Must be set before JAX is imported, hence the subprocess.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    completed = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    single, parallel = result["single"], result["parallel"]
    assert single["devices"] == parallel["devices"] == 2
    # The weights moved away from the equal start, so the comparison has teeth.
    assert np.abs(np.array(single["mixture"]) - 1 / 3).max() > 1e-2
    np.testing.assert_allclose(parallel["mixture"], single["mixture"], rtol=1e-5)
    np.testing.assert_allclose(parallel["gamma"], single["gamma"], rtol=1e-5)
    np.testing.assert_allclose(
        parallel["predictions"], single["predictions"], rtol=1e-4, atol=1e-5
    )
