"""The one walk over a model's layers, and every feature that searches a model."""

import keras
import numpy as np

from keras_tether import distribution, parametrize
from keras_tether._cli import _inspect
from keras_tether._walk import all_layers
from keras_tether.callbacks import MixtureWeightsHistory
from keras_tether.layers import ParallelDense, Parametrized, WeightedAverage


class _Block(keras.layers.Layer):
    """A custom layer holding sublayers as an attribute, a list and a dict."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.branches = [keras.layers.Dense(3, name=f"{self.name}_b{i}") for i in "01"]
        self.heads = {"main": keras.layers.Dense(3, name=f"{self.name}_head")}
        self.mix = WeightedAverage(name=f"{self.name}_mix")

    def call(self, x):
        mixed = self.mix([branch(x) for branch in self.branches])
        return self.heads["main"](mixed)


class _Outer(keras.layers.Layer):
    """A custom layer two levels above the mixture."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = _Block(name="inner")

    def call(self, x):
        return self.inner(x)


def _names(layers):
    return [layer.name for layer in layers]


def test_reaches_layers_in_custom_layers_lists_and_dicts():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _Outer(name="outer")(inputs))
    names = _names(all_layers(model))
    for name in ["outer", "inner", "inner_b0", "inner_b1", "inner_head", "inner_mix"]:
        assert names.count(name) == 1, names
    # Parents come before what they hold.
    assert names.index("outer") < names.index("inner") < names.index("inner_mix")


def test_reaches_layers_inside_wrappers_and_nested_models():
    dense = keras.layers.Dense(3, use_bias=False, name="wrapped_dense")
    constrained = Parametrized(dense, {"kernel": parametrize.Positive()}, name="pos")
    inner = keras.Sequential(
        [keras.Input((5, 4)), keras.layers.TimeDistributed(constrained, name="td")],
        name="inner_model",
    )
    inputs = keras.Input((5, 4))
    sequence = keras.layers.Bidirectional(
        keras.layers.LSTM(2, name="lstm"), name="bidi"
    )(inner(inputs))
    model = keras.Model(inputs, sequence)
    names = _names(all_layers(model))
    for name in ["inner_model", "td", "pos", "wrapped_dense", "bidi"]:
        assert names.count(name) == 1, names
    lstms = [
        layer for layer in all_layers(model) if isinstance(layer, keras.layers.LSTM)
    ]
    assert len(lstms) == 2  # the forward and the backward copy


def test_a_shared_layer_is_listed_once_and_self_only_on_request():
    shared = keras.layers.Dense(2, name="shared")
    inputs = keras.Input((2,))
    inner = keras.Sequential([keras.Input((2,)), shared], name="inner")
    model = keras.Model(inputs, inner(shared(inputs)), name="outer")
    layers = all_layers(model)
    assert [layer for layer in layers if layer is shared] == [shared]
    assert model not in layers
    assert all_layers(model, include_self=True)[0] is model
    assert all_layers(shared) == []


def _mixture_in_custom_layer_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _Outer(name="outer")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    return model


def test_mixture_weights_history_finds_a_mixture_inside_a_custom_layer():
    model = _mixture_in_custom_layer_model()
    recorder = MixtureWeightsHistory()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[recorder])
    layer = model.get_layer("outer").inner.mix
    assert list(recorder.history) == ["inner_mix"]
    np.testing.assert_allclose(recorder.initial["inner_mix"], [0.5, 0.5], atol=1e-6)
    # The last record is the layer's softmax(logits), computed here by hand.
    logits = keras.ops.convert_to_numpy(layer.logits).astype("float64")
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(recorder.history["inner_mix"][-1], expected, atol=1e-6)


def test_inspect_and_layout_map_find_the_same_nested_layers():
    model = _mixture_in_custom_layer_model()
    assert _names(_inspect._mixing_layers(model)) == ["inner_mix"]

    class _Experts(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.experts = [ParallelDense(3, branches=2, name="deep_experts")]

        def build(self, input_shape):
            self.experts[0].build(input_shape)

        def call(self, x):
            return self.experts[0](x)

    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.Input((4,)), _Experts(name="holder")])
    nested = keras.Model(inputs, inner(inputs))
    mesh = keras.distribution.DeviceMesh(
        (1, 1), axis_names=("batch", "model"), devices=["cpu:0"]
    )
    layout_map = distribution.branch_layout_map(nested, mesh)
    assert sorted(layout_map) == [
        path
        for path in sorted(v.path for v in nested.weights)
        if path.endswith(("deep_experts/kernel", "deep_experts/bias"))
    ]
    assert len(layout_map) == 2
