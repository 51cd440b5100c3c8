import keras
import numpy as np
import pytest

from keras_tether import ties
from keras_tether.layers import ReversibleConv2D, ReversibleDense


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_tied_autoencoder_structure_and_parameter_count():
    model = ties.tied_autoencoder(input_dim=10, units=[6, 4], activation="tanh")
    assert tuple(model.outputs[0].shape) == (None, 10)
    # Kernels 10*6 + 6*4 once; forward biases 6 + 4, reverse biases 10 + 6.
    assert model.count_params() == 60 + 24 + 6 + 4 + 10 + 6
    kernels = [w for w in model.weights if len(w.shape) == 2]
    assert [tuple(w.shape) for w in kernels] == [(10, 6), (6, 4)]


def test_tied_autoencoder_forward_matches_numpy():
    model = ties.tied_autoencoder(
        input_dim=5, units=[3, 2], activation="relu", output_activation="sigmoid"
    )
    for weight in model.weights:
        noise = np.random.default_rng(len(weight.path)).normal(size=weight.shape)
        weight.assign(noise.astype("float32"))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    first, second = model.get_layer("tied_dense_0"), model.get_layer("tied_dense_1")
    w0, w1 = _np(first.kernel), _np(second.kernel)
    h = np.maximum(x @ w0 + _np(first.bias), 0)
    h = np.maximum(h @ w1 + _np(second.bias), 0)
    h = np.maximum(h @ w1.T + _np(second.reverse_bias), 0)
    expected = 1 / (1 + np.exp(-(h @ w0.T + _np(first.reverse_bias))))
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)


def test_tied_autoencoder_without_biases():
    model = ties.tied_autoencoder(input_dim=8, units=[4], use_bias=False)
    assert model.count_params() == 8 * 4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"input_dim": 0, "units": [2]}, ValueError, r"`input_dim`.*input_dim=0"),
        ({"input_dim": 4, "units": []}, ValueError, r"units=\[\]"),
        ({"input_dim": 4, "units": [2, -1]}, ValueError, r"`units`.*units=-1"),
        ({"input_dim": 4, "units": 3}, TypeError, r"`units`.*units=3"),
        ({"input_dim": 4, "units": [2], "use_bias": "no"}, TypeError, "use_bias"),
    ],
)
def test_tied_autoencoder_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ties.tied_autoencoder(**kwargs)


@keras.saving.register_keras_serializable(package="tests_ties")
class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = ReversibleDense(3, name="inner")

    def call(self, x):
        return self.dense(self.dense(x), reverse=True)


def test_list_ties_finds_layers_inside_custom_layers_and_wrappers():
    inputs = keras.Input((5,))
    conv = ReversibleConv2D(2, 3, padding="same", name="conv")
    images = keras.Input((4, 4, 1))
    embedding = keras.layers.ReversibleEmbedding(7, 5, name="embedding")
    tokens = keras.Input((3,), dtype="int32")
    model = keras.Model(
        [inputs, images, tokens],
        [
            Block(name="block")(inputs),
            conv(conv(images), reverse=True),
            embedding(embedding(tokens), reverse=True),
        ],
    )
    records = {tie.layer: tie for tie in ties.list_ties(model)}
    assert set(records) == {"inner", "conv", "embedding"}
    assert records["inner"].shapes == ((5, 3),)
    assert records["conv"].uses == ("forward", "reverse")
    assert records["embedding"].shapes == ((7, 5),)
    assert records["embedding"].uses == ()
    assert ties.count_params(model) == model.count_params()


def test_untied_reversible_embedding_is_not_a_tie():
    embedding = keras.layers.ReversibleEmbedding(7, 5, tie_weights=False)
    tokens = keras.Input((3,), dtype="int32")
    model = keras.Model(tokens, embedding(embedding(tokens), reverse=True))
    assert ties.list_ties(model) == []


def test_count_params_counts_shared_variables_once():
    model = ties.tied_autoencoder(input_dim=8, units=[4])
    assert ties.count_params(model) == 8 * 4 + 4 + 8 == model.count_params()
    with pytest.raises(TypeError, match="`model`"):
        ties.count_params("model")
    with pytest.raises(TypeError, match="`model`"):
        ties.list_ties(None)
