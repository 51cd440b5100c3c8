"""Rebuilt ties bind to their own model's source, or refuse: never a guess.

Every test reuses the layer names "encoder" and "decoder", and keeps an
unrelated live Dense layer named "encoder" around, as a notebook re-run would.
Expected outputs are computed in numpy from the model's own variables.
"""

import os
import subprocess
import sys
import textwrap
import threading
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_tether import ties
from keras_tether.layers import DenseTranspose

INPUT_DIM, CODE_DIM = 6, 3
RNG = np.random.default_rng(7)
X = RNG.normal(size=(8, INPUT_DIM)).astype("float32")
Z = RNG.normal(size=(8, CODE_DIM)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _pair():
    encoder = keras.layers.Dense(CODE_DIM, activation="tanh", name="encoder")
    return encoder, DenseTranspose(encoder, name="decoder")


def chain():
    encoder, decoder = _pair()
    inputs = keras.Input((INPUT_DIM,))
    return keras.Model(inputs, decoder(encoder(inputs)))


def sequential():
    encoder, decoder = _pair()
    return keras.Sequential([keras.Input((INPUT_DIM,)), encoder, decoder])


def generator():
    encoder, decoder = _pair()
    z, x = keras.Input((CODE_DIM,)), keras.Input((INPUT_DIM,))
    code = encoder(x)  # builds the encoder; the decoder decodes a free latent
    return keras.Model([z, x], [decoder(z), code])


def _halves():
    encoder, decoder = _pair()
    encoder_model = keras.Sequential(
        [keras.Input((INPUT_DIM,)), encoder], name="encoder_model"
    )
    decoder_model = keras.Sequential(
        [keras.Input((CODE_DIM,)), decoder], name="decoder_model"
    )
    return encoder_model, decoder_model


def encode_then_decode():
    encoder_model, decoder_model = _halves()
    return keras.Sequential([keras.Input((INPUT_DIM,)), encoder_model, decoder_model])


def decode_then_encode():
    encoder_model, decoder_model = _halves()
    return keras.Sequential([keras.Input((CODE_DIM,)), decoder_model, encoder_model])


@keras.saving.register_keras_serializable(package="keras_tether_tests")
class Autoencoder(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = _pair()

    def call(self, inputs):
        return self.decoder(self.encoder(inputs))


def subclassed():
    model = Autoencoder()
    model(X[:1])
    return model


def _inputs(model):
    if isinstance(model, Autoencoder):
        return X
    if len(model.inputs) == 2:
        return [Z, X]
    return Z if model.inputs[0].shape[-1] == CODE_DIM else X


def _find(model, name):
    found = []

    def visit(layer):
        if layer.name == name and not isinstance(layer, keras.Model):
            found.append(layer)
        for inner in getattr(layer, "layers", []) or []:
            visit(inner)

    for layer in model.layers:
        visit(layer)
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def _expected(model, inputs):
    """The model's outputs from its own variables, in numpy."""
    encoder, decoder = _find(model, "encoder"), _find(model, "decoder")
    kernel, bias = _np(encoder.kernel), _np(encoder.bias)

    def encode(x):
        return np.tanh(x @ kernel + bias)

    def decode(z):
        return z @ kernel.T + _np(decoder.bias)

    if isinstance(inputs, list):
        return [decode(inputs[0]), encode(inputs[1])]
    if inputs.shape[-1] == CODE_DIM:
        return encode(decode(inputs))
    return decode(encode(inputs))


def _outputs(model, inputs):
    outputs = model(inputs)
    if isinstance(outputs, list | tuple):
        return [_np(o) for o in outputs]
    return _np(outputs)


def _assert_close(actual, expected):
    if isinstance(expected, list):
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))


def _copy_weights(source_model, target_model):
    encoder = _find(target_model, "encoder")
    encoder.set_weights(_find(source_model, "encoder").get_weights())
    bias = _np(_find(source_model, "decoder").bias).copy()
    _find(target_model, "decoder").bias.assign(bias)


def _assert_own_tie(model):
    decoder, encoder = _find(model, "decoder"), _find(model, "encoder")
    assert not decoder.tie_pending
    assert decoder.source is encoder
    kernels = [w for w in model.weights if w is encoder.kernel]
    assert len(kernels) == 1
    assert ties.count_params(model) == (INPUT_DIM * CODE_DIM + CODE_DIM + INPUT_DIM), (
        "the shared kernel must be counted once"
    )


def _train(model, inputs):
    outputs = model(inputs)
    targets = (
        [np.zeros(o.shape, "float32") for o in outputs]
        if isinstance(outputs, list | tuple)
        else np.zeros(outputs.shape, "float32")
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(inputs, targets, epochs=1, batch_size=4, verbose=0)


@pytest.fixture
def bystander():
    """An unrelated live layer with the source's name and class."""
    layer = keras.layers.Dense(CODE_DIM, name="encoder")
    layer.build((None, INPUT_DIM))
    return layer


LAYOUTS = [
    chain,
    sequential,
    generator,
    encode_then_decode,
    decode_then_encode,
    subclassed,
]


def _keras_clone(model):
    return keras.models.clone_model(model)


def _from_config(model):
    return model.__class__.from_config(model.get_config())


REBUILDS = {
    "from_config": _from_config,
    "keras_clone_model": _keras_clone,
    "ties_clone_model": ties.clone_model,
}


@pytest.mark.parametrize("rebuild", REBUILDS.values(), ids=REBUILDS.keys())
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_a_rebuilt_tie_reads_its_own_models_source(layout, rebuild, bystander):
    original = layout()
    _randomize(original, seed=1)
    earlier = layout()  # the same cell run before: same names, still alive
    kept = {id(v): _np(v).copy() for m in (original, earlier) for v in m.weights}
    kept[id(bystander.kernel)] = _np(bystander.kernel).copy()
    alive = [*original.weights, *earlier.weights, bystander.kernel]

    rebuilt = rebuild(original)
    inputs = _inputs(rebuilt)
    rebuilt(inputs)  # builds a subclassed model; binds any pending tie
    _copy_weights(original, rebuilt)
    _assert_close(_outputs(rebuilt, inputs), _expected(original, inputs))
    _assert_own_tie(rebuilt)
    _train(rebuilt, inputs)
    _assert_own_tie(rebuilt)
    _assert_close(_outputs(rebuilt, inputs), _expected(rebuilt, inputs))
    for variable in alive:
        np.testing.assert_array_equal(_np(variable), kept[id(variable)])


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_ties_clone_model_binds_before_the_first_call(layout, bystander):
    clone = ties.clone_model(layout())
    decoder, encoder = _find(clone, "decoder"), _find(clone, "encoder")
    assert not decoder.tie_pending
    assert decoder.source is encoder


def _saved_kernel_count(path):
    shapes = []

    def collect(_, obj):
        if isinstance(obj, h5py.Dataset):
            shapes.append(obj.shape)

    with (
        zipfile.ZipFile(path) as archive,
        archive.open("model.weights.h5") as handle,
        h5py.File(handle) as h5,
    ):
        h5.visititems(collect)
    return shapes.count((INPUT_DIM, CODE_DIM))


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    import keras_tether  # registers the layers
    sys.path.insert(0, sys.argv[1])
    import test_tie_rebuilding as t

    bystander = keras.layers.Dense(t.CODE_DIM, name="encoder")
    bystander.build((None, t.INPUT_DIM))
    before = keras.ops.convert_to_numpy(bystander.kernel).copy()
    for directory in sys.argv[2:]:
        model = keras.saving.load_model(directory + "/model.keras", safe_mode=True)
        saved = np.load(directory + "/expected.npz")
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        inputs = t._inputs(model)
        outputs = t._outputs(model, inputs)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for a, e in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=directory)
        t._assert_own_tie(model)
        t._train(model, inputs)
        t._assert_own_tie(model)
        after = keras.ops.convert_to_numpy(bystander.kernel)
        assert np.array_equal(before, after), f"{directory} touched a bystander"
        print("LOADED-TIED", directory)
    """
)


def test_keras_files_round_trip_in_a_fresh_process(bystander, tmp_path):
    directories = []
    for layout in LAYOUTS:
        model = layout()
        _randomize(model, seed=2)
        directory = tmp_path / layout.__name__
        directory.mkdir()
        model.save(str(directory / "model.keras"))
        outputs = _outputs(model, _inputs(model))
        outputs = outputs if isinstance(outputs, list) else [outputs]
        np.savez(directory / "expected.npz", *outputs)
        assert _saved_kernel_count(str(directory / "model.keras")) == 1, (
            f"{layout.__name__}: the shared kernel must be stored once"
        )
        directories.append(str(directory))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, os.path.dirname(__file__), *directories],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("LOADED-TIED") == len(LAYOUTS)


def test_loading_never_writes_into_an_unrelated_layer(bystander, tmp_path):
    model = generator()
    _randomize(model, seed=3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    before = _np(bystander.kernel).copy()
    loaded = keras.saving.load_model(path)
    inputs = _inputs(loaded)
    _assert_close(_outputs(loaded, inputs), _expected(model, inputs))
    _assert_own_tie(loaded)
    np.testing.assert_array_equal(_np(bystander.kernel), before)


def _decoder_alone():
    encoder = keras.layers.Dense(CODE_DIM, name="encoder")
    encoder_model = keras.Sequential([keras.Input((INPUT_DIM,)), encoder])
    decoder_model = keras.Sequential(
        [keras.Input((CODE_DIM,)), DenseTranspose(encoder, name="decoder")]
    )
    _randomize(encoder_model, seed=4)
    _randomize(decoder_model, seed=5)
    return encoder_model, decoder_model


def _pending_calls(model):
    """Every way to run a model; each must raise the pending-tie error."""
    model.compile(optimizer="sgd", loss="mse")
    y = np.zeros((len(Z), INPUT_DIM), "float32")
    return {
        "call": lambda: model(Z),
        "predict": lambda: model.predict(Z, verbose=0),
        "evaluate": lambda: model.evaluate(Z, y, verbose=0),
        "fit": lambda: model.fit(Z, y, epochs=1, verbose=0),
    }


@pytest.mark.parametrize("how", ["call", "predict", "evaluate", "fit"])
def test_a_decoder_loaded_alone_refuses_every_path_until_retied(how, tmp_path):
    encoder_model, decoder_model = _decoder_alone()
    path = str(tmp_path / "decoder.keras")
    decoder_model.save(path)
    saved_kernel = _np(encoder_model.layers[0].kernel).copy()
    loaded = keras.saving.load_model(path, safe_mode=True)
    decoder = loaded.get_layer("decoder")
    assert decoder.tie_pending
    assert [t.pending for t in ties.list_ties(loaded)] == [True]
    # The file's copy of the kernel came back with the candidate source.
    np.testing.assert_array_equal(_np(decoder.source.kernel), saved_kernel)
    with pytest.raises(ValueError, match=r"'decoder'.*'encoder'.*retie\(model"):
        _pending_calls(loaded)[how]()
    with pytest.raises(ValueError, match=r"exactly one Dense layer named 'encoder'"):
        ties.retie(loaded)
    fresh = keras.layers.Dense(CODE_DIM, name="encoder")
    fresh.build((None, INPUT_DIM))
    assert ties.retie(loaded, sources={"decoder": fresh}) == ["decoder"]
    assert decoder.source is fresh and not decoder.tie_pending
    expected = Z @ _np(fresh.kernel).T + _np(decoder.bias)
    np.testing.assert_allclose(_np(loaded(Z)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        loaded.predict(Z, verbose=0), expected, rtol=1e-5, atol=1e-5
    )
    before = _np(fresh.kernel).copy()
    loaded.fit(Z, np.zeros((len(Z), INPUT_DIM), "float32"), epochs=1, verbose=0)
    assert not np.allclose(_np(fresh.kernel), before), "the tie trains its source"


def test_a_decoder_cloned_alone_is_pending_and_retie_binds_it():
    encoder_model, decoder_model = _decoder_alone()
    clone = keras.models.clone_model(decoder_model)
    assert clone.get_layer("decoder").tie_pending
    with pytest.raises(ValueError, match="retie"):
        clone(Z)
    source = encoder_model.layers[0]
    ties.retie(clone, sources={"decoder": source})
    clone.get_layer("decoder").bias.assign(np.zeros(INPUT_DIM, "float32"))
    np.testing.assert_allclose(
        _np(clone(Z)), Z @ _np(source.kernel).T, rtol=1e-5, atol=1e-5
    )


def test_ties_clone_model_keeps_an_outside_source():
    encoder_model, decoder_model = _decoder_alone()
    clone = ties.clone_model(decoder_model)
    assert clone.get_layer("decoder").source is encoder_model.layers[0]


def test_bind_checks_the_type_and_the_shapes():
    encoder, decoder = _pair()
    encoder.build((None, INPUT_DIM))
    with pytest.raises(TypeError, match="`source`"):
        decoder.bind(keras.layers.Conv1D(2, 3))
    other = keras.layers.Dense(CODE_DIM + 1)
    other.build((None, INPUT_DIM))
    with pytest.raises(ValueError, match="shapes"):
        decoder.bind(other)


def test_retie_rejects_unknown_names_and_non_layers():
    model = chain()
    with pytest.raises(ValueError, match=r"no tied layer named 'nope'.*\['decoder'\]"):
        ties.retie(model, sources={"nope": keras.layers.Dense(3)})
    with pytest.raises(TypeError, match=r"`sources\['decoder'\]`"):
        ties.retie(model, sources={"decoder": "encoder"})
    with pytest.raises(TypeError, match="`sources`"):
        ties.retie(model, sources=[("decoder", None)])


def test_ambiguous_names_in_the_model_stay_pending():
    inner_a = keras.Sequential(
        [keras.Input((INPUT_DIM,)), keras.layers.Dense(CODE_DIM, name="encoder")],
        name="a",
    )
    encoder, decoder = _pair()
    inner_b = keras.Sequential([keras.Input((INPUT_DIM,)), encoder], name="b")
    z, x = keras.Input((CODE_DIM,)), keras.Input((INPUT_DIM,))
    model = keras.Model([z, x], [decoder(z), inner_a(x), inner_b(x)])
    rebuilt = keras.Model.from_config(model.get_config())
    with pytest.raises(ValueError, match="retie"):
        rebuilt([Z, X])
    with pytest.raises(ValueError, match="found 2"):
        ties.retie(rebuilt)
    clone = ties.clone_model(model)
    assert clone.get_layer("decoder").source is clone.get_layer("b").layers[0]


THREADS, ROUNDS = 4, 25


def _in_threads(work):
    errors = []

    def run(index):
        try:
            for round_ in range(ROUNDS):
                work(index, round_)
        except Exception as error:  # reported below with its thread
            errors.append((index, repr(error)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.parametrize(
    "rebuild",
    [_from_config, _keras_clone, ties.clone_model],
    ids=["from_config", "keras_clone_model", "ties_clone_model"],
)
def test_rebuilding_from_threads_never_crashes_or_mis_binds(rebuild, bystander):
    models = [sequential() for _ in range(THREADS)]

    def work(index, _):
        rebuilt = rebuild(models[index])
        rebuilt(X[:2])
        _assert_own_tie(rebuilt)
        assert _find(rebuilt, "encoder") is not _find(models[index], "encoder")

    _in_threads(work)


def test_loading_from_threads_never_crashes_or_mis_binds(bystander, tmp_path):
    model = generator()
    _randomize(model, seed=6)
    path = str(tmp_path / "model.keras")
    model.save(path)
    expected = _expected(model, [Z, X])

    def work(index, round_):
        loaded = keras.saving.load_model(path)
        _assert_close(_outputs(loaded, [Z, X]), expected)
        _assert_own_tie(loaded)

    _in_threads(work)
