import keras
import numpy as np
import pytest

from keras_tether import ties
from keras_tether.layers import ReversibleConv1D, ReversibleConv2D, ReversibleConv3D
from tests.layer_conformance import run_layer_test


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _data(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


CASES = [
    (ReversibleConv1D, (9, 2), {"kernel_size": 3, "strides": 2}),
    (
        ReversibleConv1D,
        (8, 2),
        {"kernel_size": 3, "padding": "same", "dilation_rate": 2},
    ),
    (ReversibleConv1D, (8, 2), {"kernel_size": 3, "padding": "causal"}),
    (ReversibleConv2D, (7, 7, 2), {"kernel_size": 3, "strides": 2, "padding": "same"}),
    (
        ReversibleConv2D,
        (6, 7, 2),
        {"kernel_size": 2, "strides": (2, 3), "padding": "same"},
    ),
    (ReversibleConv2D, (8, 7, 2), {"kernel_size": 3, "strides": 2}),
    (
        ReversibleConv2D,
        (2, 7, 6),
        {
            "kernel_size": 3,
            "strides": 2,
            "padding": "same",
            "data_format": "channels_first",
        },
    ),
    (
        ReversibleConv3D,
        (5, 4, 5, 1),
        {"kernel_size": 2, "strides": 2, "padding": "same"},
    ),
    # Sizes that are multiples of the strides, under "same" padding.
    (ReversibleConv1D, (8, 2), {"kernel_size": 4, "strides": 2, "padding": "same"}),
    (ReversibleConv2D, (8, 6, 2), {"kernel_size": 3, "strides": 2, "padding": "same"}),
    (
        ReversibleConv2D,
        (2, 8, 6),
        {
            "kernel_size": 3,
            "strides": (2, 3),
            "padding": "same",
            "data_format": "channels_first",
        },
    ),
    (
        ReversibleConv3D,
        (4, 4, 2, 1),
        {"kernel_size": 3, "strides": 2, "padding": "same"},
    ),
]


@pytest.mark.parametrize("cls, shape, kwargs", CASES)
def test_reverse_is_the_transpose_of_the_forward_matrix(cls, shape, kwargs):
    # The forward convolution is Keras' own. Its matrix, read off column by
    # column from the basis vectors, transposed, is what reverse must apply.
    layer = cls(3, use_bias=False, reverse_use_bias=False, **kwargs)
    size = int(np.prod(shape))
    basis = np.eye(size, dtype="float32").reshape((size, *shape))
    columns = _np(layer(basis)).reshape(size, -1)  # row i: forward(e_i)
    y = _data(2, *_np(layer(basis[:1])).shape[1:], seed=1)
    reverse = _np(layer(y, reverse=True))
    assert reverse.shape == (2, *shape)
    expected = y.reshape(2, -1) @ columns.T
    np.testing.assert_allclose(reverse.reshape(2, -1), expected, rtol=1e-4, atol=1e-4)
    # And so the adjoint identity <conv(x), y> == <x, conv(y, reverse=True)>.
    x = _data(2, *shape, seed=2)
    np.testing.assert_allclose(
        np.sum(_np(layer(x)) * y), np.sum(x * reverse), rtol=1e-4, atol=1e-4
    )


def test_reverse_bias_and_activation_match_numpy():
    layer = ReversibleConv2D(
        3,
        3,
        padding="same",
        reverse_activation="tanh",
        reverse_bias_initializer="random_normal",
    )
    layer.build((None, 5, 5, 2))
    layer.reverse_use_bias = True
    y = _data(1, 5, 5, 3)
    plain = ReversibleConv2D(3, 3, padding="same", reverse_use_bias=False)
    plain.build((None, 5, 5, 2))
    plain.kernel.assign(layer.kernel)
    expected = np.tanh(_np(plain(y, reverse=True)) + _np(layer.reverse_bias))
    np.testing.assert_allclose(
        _np(layer(y, reverse=True)), expected, rtol=1e-5, atol=1e-5
    )
    assert layer.reverse_bias.shape == (2,)


def test_conformance_both_directions():
    def make_model():
        layer = ReversibleConv2D(4, 3, strides=2, padding="same", activation="relu")
        inputs = keras.Input((7, 7, 3))
        return keras.Model(inputs, layer(layer(inputs), reverse=True)), layer

    run_layer_test(
        ReversibleConv2D,
        _data(2, 7, 7, 3),
        make_model=make_model,
        expected_output_shape=(2, 7, 7, 3),
        expected_num_trainable_weights=3,
    )


def test_tied_conv_autoencoder_rebuilt_and_reloaded(tmp_path):
    layer = ReversibleConv2D(
        4, 3, strides=2, padding="same", activation="relu", name="conv"
    )
    inputs = keras.Input((7, 7, 3))
    model = keras.Model(inputs, layer(layer(inputs), reverse=True))
    x = _data(2, 7, 7, 3)
    expected = _np(model(x))
    assert model.count_params() == 3 * 3 * 3 * 4 + 4 + 3
    path = str(tmp_path / "conv.keras")
    model.save(path)
    for rebuilt in (
        keras.saving.load_model(path, safe_mode=True),
        keras.models.clone_model(model),
    ):
        rebuilt.set_weights(model.get_weights())
        np.testing.assert_array_equal(_np(rebuilt(x)), expected)
        assert rebuilt.count_params() == model.count_params()
        (tie,) = ties.list_ties(rebuilt)
        assert tie.uses == ("forward", "reverse") and tie.shapes == ((3, 3, 3, 4),)


def test_unknown_size_along_a_strided_axis_is_refused():
    layer = ReversibleConv1D(2, 3, strides=2)
    inputs = keras.Input((None, 3))
    code = layer(inputs)
    with pytest.raises(ValueError, match="ambiguous.*input_spatial_shape=\\(None,\\)"):
        layer(code, reverse=True)


def test_unknown_size_without_strides_is_exact():
    layer = ReversibleConv1D(
        2, 3, padding="same", use_bias=False, reverse_use_bias=False
    )
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, layer(layer(inputs), reverse=True))
    x = _data(1, 6, 3)
    assert _np(model(x)).shape == (1, 6, 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"filters": 4, "kernel_size": 3, "groups": 2}, ValueError, "groups=2"),
        (
            {"filters": 4, "kernel_size": 3, "reverse_use_bias": 1},
            TypeError,
            "reverse_use_bias=1",
        ),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReversibleConv2D(**kwargs)


def test_wrong_channels_are_refused():
    layer = ReversibleConv2D(4, 3)
    layer.build((None, 6, 6, 3))
    with pytest.raises(ValueError, match="4 channels \\(`filters`\\)"):
        layer(_data(1, 4, 4, 3), reverse=True)
