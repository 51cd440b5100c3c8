"""Ties survive every path: saving, loading, cloning, configs, checkpoints."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_tether import ties
from keras_tether.layers import DenseTranspose, TiedLayer

INPUT_DIM, CODE_DIM = 6, 3


def _names():
    """The same layer names in every model, as a notebook re-run would give."""
    return "encoder", "decoder"


X = np.random.default_rng(0).normal(size=(16, INPUT_DIM)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def functional():
    enc, dec = _names()
    encoder = keras.layers.Dense(CODE_DIM, activation="relu", name=enc)
    inputs = keras.Input((INPUT_DIM,))
    outputs = DenseTranspose(encoder, name=dec)(encoder(inputs))
    return keras.Model(inputs, outputs)


def sequential():
    enc, dec = _names()
    encoder = keras.layers.Dense(CODE_DIM, activation="relu", name=enc)
    return keras.Sequential(
        [keras.Input((INPUT_DIM,)), encoder, DenseTranspose(encoder, name=dec)]
    )


def nested_sequential():
    enc, dec = _names()
    encoder = keras.layers.Dense(CODE_DIM, activation="relu", name=enc)
    encoder_model = keras.Sequential(
        [keras.Input((INPUT_DIM,)), encoder], name="encoder_model"
    )
    decoder_model = keras.Sequential(
        [keras.Input((CODE_DIM,)), DenseTranspose(encoder, name=dec)],
        name="decoder_model",
    )
    return keras.Sequential([keras.Input((INPUT_DIM,)), encoder_model, decoder_model])


@keras.saving.register_keras_serializable(package="keras_tether_tests")
class TiedAutoencoder(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        enc, dec = _names()
        self.enc = keras.layers.Dense(CODE_DIM, activation="relu", name=enc)
        self.dec = DenseTranspose(self.enc, name=dec)

    def call(self, inputs):
        return self.dec(self.enc(inputs))


def subclassed():
    model = TiedAutoencoder()
    model(X[:1])
    return model


BUILDERS = [functional, sequential, nested_sequential, subclassed]
CONFIG_BUILDERS = [functional, sequential, nested_sequential]


def _randomize(model, seed=1):
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))


def _layers(model):
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_layers(layer))
    return found


def _tie(model):
    if isinstance(model, TiedAutoencoder):
        return model.dec, model.enc
    layers = _layers(model)
    (dec,) = [layer for layer in layers if layer.name == "decoder"]
    (enc,) = [layer for layer in layers if layer.name == "encoder"]
    return dec, enc


def _expected_output(model, x):
    """Forward pass in numpy from the model's own variables."""
    dec, enc = _tie(model)
    kernel = _np(enc.kernel)
    code = np.maximum(x @ kernel + _np(enc.bias), 0.0)
    return code @ kernel.T + _np(dec.bias)


def assert_tied(model):
    dec, enc = _tie(model)
    assert not dec.tie_pending
    assert dec.source is enc, "the tied layer reads a layer outside the model"
    ids = [id(w) for w in model.weights]
    assert len(ids) == len(set(ids))
    assert sum(1 for w in model.weights if w is enc.kernel) == 1
    assert model.count_params() == INPUT_DIM * CODE_DIM + CODE_DIM + INPUT_DIM
    np.testing.assert_allclose(
        _np(model(X)), _expected_output(model, X), rtol=1e-4, atol=1e-5
    )


def assert_stays_tied_in_training(model):
    dec, enc = _tie(model)
    before = _np(enc.kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    model.fit(X, X, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(before, _np(enc.kernel))
    assert_tied(model)


def _kernel_datasets(path):
    """Shapes of every array stored in a `.keras` or `.weights.h5` file."""
    shapes = []

    def collect(_, obj):
        if isinstance(obj, h5py.Dataset):
            shapes.append(tuple(obj.shape))

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            extracted = archive.extract("model.weights.h5", os.path.dirname(path))
        path = extracted
    with h5py.File(path, "r") as handle:
        handle.visititems(collect)
    return shapes


@pytest.mark.parametrize("build", BUILDERS, ids=lambda f: f.__name__)
def test_keras_file_round_trip_keeps_the_tie(build, tmp_path):
    model = build()
    _randomize(model)
    reference = _np(model(X))
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert _kernel_datasets(path).count((INPUT_DIM, CODE_DIM)) == 1
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_np(loaded(X)), reference)
    assert_tied(loaded)
    assert_stays_tied_in_training(loaded)


@pytest.mark.parametrize("build", BUILDERS, ids=lambda f: f.__name__)
def test_save_weights_and_load_weights(build, tmp_path):
    model = build()
    _randomize(model)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    assert _kernel_datasets(path).count((INPUT_DIM, CODE_DIM)) == 1
    other = build()
    other.load_weights(path)
    np.testing.assert_array_equal(_np(other(X)), _np(model(X)))
    assert_tied(other)


@pytest.mark.parametrize("build", CONFIG_BUILDERS, ids=lambda f: f.__name__)
def test_clone_model_keeps_the_tie(build):
    model = build()
    _randomize(model)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(_np(clone(X)), _np(model(X)))
    assert_tied(clone)
    assert _tie(clone)[1] is not _tie(model)[1]
    assert_stays_tied_in_training(clone)
    assert_tied(model)


@pytest.mark.parametrize("build", CONFIG_BUILDERS, ids=lambda f: f.__name__)
def test_from_config_keeps_the_tie(build):
    model = build()
    _randomize(model)
    revived = model.__class__.from_config(model.get_config())
    revived.set_weights(model.get_weights())
    np.testing.assert_array_equal(_np(revived(X)), _np(model(X)))
    assert_tied(revived)
    assert _tie(revived)[1] is not _tie(model)[1]
    assert_stays_tied_in_training(revived)


def test_subclassed_clone_keeps_the_tie():
    model = subclassed()
    _randomize(model)
    clone = keras.models.clone_model(model)
    clone(X[:1])
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(_np(clone(X)), _np(model(X)))
    assert_tied(clone)


class _StopAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_checkpoint_and_backup_resume_keep_the_tie(tmp_path):
    def compiled():
        model = functional()
        _randomize(model, seed=5)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
        return model

    uninterrupted = compiled()
    uninterrupted.fit(X, X, epochs=4, batch_size=8, shuffle=False, verbose=0)

    backup_dir = str(tmp_path / "backup")
    checkpoint = str(tmp_path / "checkpoint.keras")
    model = compiled()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            X,
            X,
            epochs=4,
            batch_size=8,
            shuffle=False,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup_dir),
                keras.callbacks.ModelCheckpoint(checkpoint),
                _StopAtEpoch(2),
            ],
        )
    from_checkpoint = keras.saving.load_model(checkpoint, safe_mode=True)
    assert_tied(from_checkpoint)

    resumed = compiled()
    resumed.fit(
        X,
        X,
        epochs=4,
        batch_size=8,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup_dir)],
    )
    assert_tied(resumed)
    np.testing.assert_allclose(
        _np(resumed(X)), _np(uninterrupted(X)), rtol=1e-5, atol=1e-6
    )


def test_a_tie_rebuilt_alone_refuses_to_run_until_retied():
    model = functional()
    dec, enc = (layer.name for layer in _tie(model))
    # Live layers with the source's name and class are no reason to bind:
    # the revived layer is not in a model with its source, so it waits.
    stray = keras.layers.Dense(CODE_DIM, name=enc)
    stray.build((None, INPUT_DIM))
    other_stray = keras.layers.Dense(CODE_DIM, name=enc)
    other_stray.build((None, INPUT_DIM))
    config = model.get_config()
    inputs = keras.Input((CODE_DIM,))
    dec_config = next(c for c in config["layers"] if c["config"]["name"] == dec)
    revived = DenseTranspose.from_config(dec_config["config"])
    assert revived.tie_pending
    revived_model = keras.Model(inputs, revived(inputs))
    with pytest.raises(ValueError, match=rf"'{dec}' is tied to a layer named '{enc}'"):
        revived_model(np.ones((1, CODE_DIM), "float32"))
    holder = keras.Sequential([keras.Input((INPUT_DIM,)), stray, revived_model])
    assert ties.retie(holder) == [dec]
    assert revived.source is stray
    assert other_stray.built
    np.testing.assert_allclose(
        _np(holder(X)),
        (X @ _np(stray.kernel) + _np(stray.bias)) @ _np(stray.kernel).T,
        rtol=1e-5,
        atol=1e-6,
    )


def test_standalone_from_config_keeps_a_private_source():
    source = keras.layers.Dense(CODE_DIM)
    source.build((None, INPUT_DIM))
    layer = DenseTranspose(source)
    revived = DenseTranspose.from_config(layer.get_config())
    assert not revived.tie_pending
    assert revived.source is not source
    assert revived.source.get_config() == source.get_config()
    assert tuple(revived(np.ones((2, CODE_DIM), "float32")).shape) == (2, INPUT_DIM)


def test_base_class_rejects_a_non_layer_source():
    class Custom(TiedLayer):
        def shared_variables(self):
            return []

    with pytest.raises(TypeError, match="Received: source=3"):
        Custom(3)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX distribution API")
def test_data_parallel_on_two_devices_matches_one_device():
    script = textwrap.dedent(
        """
        import json, sys
        import keras
        import numpy as np
        from keras_tether import ties

        devices = keras.distribution.list_devices("cpu")
        assert len(devices) == 2, devices
        if sys.argv[1] == "2":
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices)
            )
        keras.utils.set_random_seed(7)
        model = ties.tied_autoencoder(12, [5, 3])
        x = np.random.default_rng(0).normal(size=(32, 12)).astype("float32")
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        model.fit(x, x, epochs=3, batch_size=8, shuffle=False, verbose=0)
        kernel = model.get_layer("encoder_0").kernel
        tied = model.get_layer("decoder_0").source.kernel is kernel
        out = keras.ops.convert_to_numpy(model(x)).tolist()
        print(json.dumps({"tied": tied, "out": out}))
        """
    )
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "jax"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    results = []
    for devices in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", script, devices],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert results[0]["tied"] and results[1]["tied"]
    np.testing.assert_allclose(
        np.array(results[1]["out"]), np.array(results[0]["out"]), rtol=1e-5, atol=1e-6
    )
