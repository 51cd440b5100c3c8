import keras
import numpy as np
import pytest

from keras_tether import ties
from keras_tether.layers import DenseTranspose, TiedDense


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_tied_autoencoder_structure_and_parameter_count():
    model = ties.tied_autoencoder(input_dim=10, units=[6, 4], activation="tanh")
    assert tuple(model.outputs[0].shape) == (None, 10)
    # Kernels 10*6 + 6*4 once; biases 6 + 4 (encoders) + 6 + 10 (decoders).
    assert model.count_params() == 60 + 24 + 6 + 4 + 6 + 10
    untied_kernels = 2 * (60 + 24)
    kernels = sum(int(np.prod(w.shape)) for w in model.weights if len(w.shape) == 2)
    assert kernels * 2 == untied_kernels


def test_tied_autoencoder_forward_matches_numpy():
    model = ties.tied_autoencoder(input_dim=5, units=[3, 2], activation="relu")
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    w0 = _np(model.get_layer("encoder_0").kernel)
    w1 = _np(model.get_layer("encoder_1").kernel)
    b = {layer.name: _np(layer.bias) for layer in model.layers}
    h = np.maximum(x @ w0 + b["encoder_0"], 0)
    h = np.maximum(h @ w1 + b["encoder_1"], 0)
    h = np.maximum(h @ w1.T + b["decoder_1"], 0)
    expected = h @ w0.T + b["decoder_0"]
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"input_dim": 0, "units": [2]}, ValueError, r"`input_dim`.*input_dim=0"),
        ({"input_dim": 4, "units": []}, ValueError, r"units=\[\]"),
        ({"input_dim": 4, "units": [2, -1]}, ValueError, r"`units`.*units=-1"),
        ({"input_dim": 4, "units": 3}, TypeError, r"`units`.*units=3"),
    ],
)
def test_tied_autoencoder_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ties.tied_autoencoder(**kwargs)


def test_list_ties_describes_every_tie():
    model = ties.tied_autoencoder(input_dim=7, units=[3])
    (tie,) = ties.list_ties(model)
    assert tie.layer == "decoder_0" and tie.source == "encoder_0"
    assert tie.layer_class == "DenseTranspose" and tie.source_class == "Dense"
    assert tie.shapes == ((7, 3),)
    assert tie.transform == "transpose"
    assert tie.source_in_model
    assert tie.variables[0].endswith("encoder_0/kernel")


def test_list_ties_marks_a_source_outside_the_model():
    source = keras.layers.Dense(3)
    source.build((None, 4))
    inputs = keras.Input((3,))
    model = keras.Model(inputs, DenseTranspose(source)(inputs))
    (tie,) = ties.list_ties(model)
    assert not tie.source_in_model


def test_count_params_counts_shared_variables_once():
    model = ties.tied_autoencoder(input_dim=8, units=[4])
    assert ties.count_params(model) == 8 * 4 + 4 + 8
    with pytest.raises(TypeError, match="`model`"):
        ties.count_params("model")


def test_retie_reports_missing_sources():
    source = keras.layers.Dense(2, name="lonely")
    source.build((None, 3))
    layer = DenseTranspose(source)
    layer._pending_source_name = "lonely"
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    holder = keras.Sequential([keras.Input((2,)), layer])
    with pytest.raises(ValueError, match=r"exactly one Dense layer named 'lonely'"):
        ties.retie(holder)
    assert ties.retie(model) == []


def test_register_transform_is_used_by_name_and_survives_saving(tmp_path):
    name = "scaled_transpose_for_test"
    if name not in ties.registered_transforms():

        @ties.register_transform(name)
        def scaled_transpose(weight):
            return 2.0 * keras.ops.transpose(weight)

    encoder = keras.layers.Dense(3, use_bias=False)
    decoder = TiedDense(encoder, transform=name, use_bias=False)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    x = np.random.default_rng(1).normal(size=(2, 5)).astype("float32")
    kernel = _np(encoder.kernel)
    np.testing.assert_allclose(
        _np(model(x)), x @ kernel @ (2.0 * kernel.T), rtol=1e-5, atol=1e-6
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=0, atol=0)


def test_register_transform_rejects_bad_names_and_duplicates():
    with pytest.raises(ValueError, match="`name`"):
        ties.register_transform("")
    with pytest.raises(TypeError, match="`name`"):
        ties.register_transform(3)
    with pytest.raises(ValueError, match=r"different transform.*'transpose'"):
        ties.register_transform("transpose")(lambda w: w)
    with pytest.raises(TypeError, match=r"`transform`.*transform=3"):
        ties.get_transform(3)


def _define_negate():
    # Defined afresh at every call, as a re-run notebook cell would.
    def negate(weight):
        return -weight

    return negate


def test_registering_the_same_transform_again_is_harmless():
    ties.register_transform("negate_for_test")(_define_negate())
    ties.register_transform("negate_for_test")(_define_negate())  # re-run cell

    def negate(weight):
        return weight * 2.0

    with pytest.raises(ValueError, match="different transform"):
        ties.register_transform("negate_for_test")(negate)
    value = keras.ops.convert_to_numpy(
        ties.get_transform("negate_for_test")(keras.ops.ones((2,)))
    )
    np.testing.assert_array_equal(value, [-1.0, -1.0])


def test_transpose_transform_needs_a_matrix():
    with pytest.raises(ValueError, match="rank 2"):
        ties.get_transform("transpose")(keras.ops.ones((3,)))
