"""Ties kept exactly through every way Keras rebuilds or reloads a model.

Each layout computes `rev(fwd(x))` with one reversible layer called at both
sites, `fwd(x) = relu(x W + b)` and `rev(y) = y W^T + c`, so every rebuilt
model is checked against the same numpy formula, before and after a training
step that must move the one kernel both directions read.
"""

import json
import os
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

from keras_tether import parametrize, ties
from keras_tether.layers import Parametrized, ReversibleDense

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN, UNITS = 6, 4


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _data(seed=0):
    return np.random.default_rng(seed).normal(size=(5, IN)).astype("float32")


def _tied(**kwargs):
    return ReversibleDense(
        UNITS,
        activation="relu",
        bias_initializer="random_normal",
        reverse_bias_initializer="random_normal",
        name="tied",
        **kwargs,
    )


@keras.saving.register_keras_serializable(package="tests_tie_layouts")
class TiedBlock(keras.layers.Layer):
    """A custom layer that owns the reversible layer and calls both ways."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = _tied()

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(self.dense(x), reverse=True)


@keras.saving.register_keras_serializable(package="tests_tie_layouts")
class TiedModel(keras.Model):
    """A subclassed model that owns the reversible layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = _tied()

    def call(self, x):
        return self.dense(self.dense(x), reverse=True)


def _chain():
    layer = _tied()
    inputs = keras.Input((IN,), name="x")
    return keras.Model(inputs, layer(layer(inputs), reverse=True), name="chain")


def _custom_layer():
    inputs = keras.Input((IN,), name="x")
    return keras.Model(inputs, TiedBlock(name="block")(inputs), name="custom")


def _subclassed():
    model = TiedModel(name="subclassed")
    model(_data())
    return model


def _parametrized():
    layer = _tied()
    wrapper = Parametrized(layer, {"kernel": parametrize.Orthogonal()}, name="wrapper")
    inputs = keras.Input((IN,), name="x")
    return keras.Model(inputs, wrapper(wrapper(inputs), reverse=True), name="param")


def _nested_sequential():
    inner = keras.Sequential([keras.Input((IN,)), _chain()], name="inner")
    return keras.Sequential([keras.Input((IN,)), inner], name="outer")


LAYOUTS = {
    "chain": _chain,
    "custom_layer": _custom_layer,
    "subclassed": _subclassed,
    "parametrized": _parametrized,
    "nested_sequential": _nested_sequential,
}


def _tied_of(model):
    """The reversible layer and its kernel value as both directions read it."""
    if isinstance(model, TiedModel):
        layer = model.dense
    elif model.name == "custom":
        layer = model.get_layer("block").dense
    elif model.name == "param":
        wrapper = model.get_layer("wrapper")
        return wrapper.layer, _np(wrapper.parametrized_weight("kernel"))
    elif model.name == "outer":
        layer = model.layers[0].layers[0].get_layer("tied")
    else:
        layer = model.get_layer("tied")
    return layer, _np(layer.kernel)


def _expected(model, x):
    layer, kernel = _tied_of(model)
    code = np.maximum(x @ kernel + _np(layer.bias), 0)
    return code @ kernel.T + _np(layer.reverse_bias)


def _check_exact(model, x, seed=5):
    """Outputs match numpy before and after every variable is moved.

    Each variable moves by its own noise: a model that held two copies of the
    kernel would move them apart, and its output would leave the formula.
    """
    np.testing.assert_allclose(_np(model(x)), _expected(model, x), rtol=1e-4, atol=1e-5)
    kernel = _tied_of(model)[1]
    rng = np.random.default_rng(seed)
    for weight in model.trainable_weights:
        noise = rng.normal(scale=0.3, size=weight.shape).astype("float32")
        weight.assign(_np(weight) + noise)
    assert not np.allclose(_tied_of(model)[1], kernel)
    np.testing.assert_allclose(_np(model(x)), _expected(model, x), rtol=1e-4, atol=1e-5)
    (tie,) = ties.list_ties(model)
    assert tie.uses == ("forward", "reverse")


def _unrelated():
    """A live model whose layers reuse the names of the layouts' layers."""
    model = _chain()
    state = [np.array(w) for w in model.get_weights()]
    return model, state, _np(model(_data(9)))


def _check_unrelated(unrelated):
    model, state, output = unrelated
    for weight, before in zip(model.get_weights(), state, strict=True):
        np.testing.assert_array_equal(weight, before)
    np.testing.assert_array_equal(_np(model(_data(9))), output)


def _rebuilt(model, path):
    if path == "clone_model":
        clone = keras.models.clone_model(model)
    else:
        clone = model.__class__.from_config(model.get_config())
    if not clone.built:
        clone(_data())
    clone.set_weights(model.get_weights())
    return clone


@pytest.mark.parametrize("path", ["clone_model", "from_config"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rebuilt_model_keeps_the_tie(layout, path):
    unrelated = _unrelated()
    model = LAYOUTS[layout]()
    x = _data()
    before = [np.array(w) for w in model.get_weights()]
    output = _np(model(x))
    rebuilt = _rebuilt(model, path)
    assert ties.count_params(rebuilt) == ties.count_params(model)
    np.testing.assert_array_equal(_np(rebuilt(x)), output)
    _check_exact(rebuilt, x)
    # Training the rebuilt model left the original alone.
    for weight, old in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, old)
    _check_unrelated(unrelated)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_save_weights_load_weights(layout, tmp_path):
    unrelated = _unrelated()
    model = LAYOUTS[layout]()
    x = _data()
    path = str(tmp_path / "tied.weights.h5")
    model.save_weights(path)
    fresh = LAYOUTS[layout]()
    fresh.load_weights(path)
    np.testing.assert_array_equal(_np(fresh(x)), _np(model(x)))
    _check_exact(fresh, x)
    _check_unrelated(unrelated)


@pytest.mark.parametrize("layout", ["chain", "custom_layer", "subclassed"])
def test_clones_from_threads(layout):
    unrelated = _unrelated()
    model = LAYOUTS[layout]()
    x = _data()
    output = _np(model(x))
    clones, errors = [], []

    def work():
        try:
            for _ in range(20):
                clones.append(keras.models.clone_model(model))
        except Exception as error:  # reported below, with the thread's error
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(clones) == 80
    kernels = {id(_tied_of(clone)[0]._kernel) for clone in clones}
    assert len(kernels) == 80  # every clone owns its kernel, none shares another's
    for clone in clones[::20]:
        assert ties.count_params(clone) == ties.count_params(model)
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(_np(clone(x)), output)
    _check_exact(clones[-1], x)
    _check_unrelated(unrelated)


_RELOAD = """
import json, sys
import numpy as np
import keras
sys.path[:0] = {paths!r}
from tests import test_tie_layouts as layouts
from keras_tether import ties
x = layouts._data()
results = {{}}
for name, (path, expected, params) in json.loads(sys.argv[1]).items():
    unrelated = layouts._unrelated()
    model = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(layouts._np(model(x)), np.array(expected, "float32"))
    assert ties.count_params(model) == params, (ties.count_params(model), params)
    layouts._check_exact(model, x)
    layouts._check_unrelated(unrelated)
    results[name] = "exact"
print(json.dumps(results))
"""


def test_keras_files_reload_exactly_in_a_fresh_process(tmp_path):
    unrelated = _unrelated()
    x = _data()
    saved = {}
    for name, build in LAYOUTS.items():
        model = build()
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        saved[name] = (path, _np(model(x)).tolist(), ties.count_params(model))
    _check_unrelated(unrelated)
    script = _RELOAD.format(paths=[ROOT, os.path.join(ROOT, "src")])
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == dict.fromkeys(
        LAYOUTS, "exact"
    )


def _sub_models():
    layer = _tied()
    x = keras.Input((IN,))
    encoder = keras.Model(x, layer(x), name="encoder")
    code = keras.Input((UNITS,))
    decoder = keras.Model(code, layer(code, reverse=True), name="decoder")
    inputs = keras.Input((IN,))
    return keras.Model(inputs, decoder(encoder(inputs)), name="composed")


SPLIT = "is a node of two models, 'encoder' and 'decoder', that are both layers"


@pytest.mark.parametrize(
    "path",
    ["clone_model", "from_config", "save", "call"],
)
def test_encoder_and_decoder_sub_models_composed_are_refused(path, tmp_path):
    unrelated = _unrelated()
    model = _sub_models()
    with pytest.raises(ValueError, match=SPLIT):
        if path == "clone_model":
            keras.models.clone_model(model)
        elif path == "from_config":
            keras.Model.from_config(model.get_config())
        elif path == "save":
            model.save(str(tmp_path / "composed.keras"))
        else:
            model(_data())
    _check_unrelated(unrelated)


def test_encoder_and_tied_model_side_by_side_are_fine(tmp_path):
    # The classic Keras pattern: two models over the same layers, each
    # rebuilt on its own, neither nested in the other.
    layer = _tied()
    inputs = keras.Input((IN,))
    code = layer(inputs)
    encoder = keras.Model(inputs, code)
    autoencoder = keras.Model(inputs, layer(code, reverse=True), name="chain")
    x = _data()
    np.testing.assert_allclose(
        _np(encoder(x)),
        np.maximum(x @ _np(layer.kernel) + _np(layer.bias), 0),
        rtol=1e-5,
        atol=1e-6,
    )
    _check_exact(autoencoder, x)
    keras.models.clone_model(encoder)
    keras.models.clone_model(autoencoder)
    wrapper = keras.Sequential([keras.Input((IN,)), autoencoder])
    keras.models.clone_model(wrapper)


@keras.saving.register_keras_serializable(package="tests_tie_layouts")
class ForwardBlock(keras.layers.Layer):
    """Owns a reversible layer but calls only its forward direction."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = _tied()

    def call(self, x):
        return self.dense(x)


def test_owned_layer_called_in_the_graph_is_refused():
    block = ForwardBlock()
    inputs = keras.Input((IN,))
    code = block(inputs)
    with pytest.raises(ValueError, match="is created by layer .*both inside the layer"):
        block.dense(code, reverse=True)


def test_owned_layer_called_only_in_the_graph_is_refused():
    block = ForwardBlock()
    with pytest.raises(ValueError, match="is created by layer"):
        block.dense(keras.Input((IN,)))


def test_graph_layer_then_called_inside_a_wrapper_is_refused():
    layer = _tied()
    inputs = keras.Input((IN,))
    code = layer(inputs)
    keras.Model(inputs, layer(code, reverse=True))
    wrapper = keras.layers.TimeDistributed(layer)
    with pytest.raises(ValueError, match="already called as a node .* inside layer"):
        wrapper(np.ones((2, 3, IN), "float32"))


def test_eager_calls_from_the_top_level_are_not_refused():
    layer = _tied()
    x = _data()
    code = layer(x)
    layer(code, reverse=True)
    inputs = keras.Input((IN,))
    model = keras.Model(inputs, layer(layer(inputs), reverse=True), name="chain")
    _check_exact(model, x)
