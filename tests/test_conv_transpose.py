import math
import os

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether.layers import ConvTranspose

CONVS = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _input_shape(rank, size, channels, data_format="channels_last"):
    if data_format == "channels_last":
        return (2,) + (size,) * rank + (channels,)
    return (2, channels) + (size,) * rank


def _adjoint_gap(source, x, rng):
    """Returns the shapes and the two sides of `<conv(x), g> == <x, convT(g)>`."""
    y = _np(source(x))
    g = rng.normal(size=y.shape).astype("float32")
    back = _np(ConvTranspose(source, use_bias=False)(g))
    lhs = np.sum(y.astype("float64") * g)
    rhs = np.sum(x.astype("float64") * back)
    return back.shape, lhs, rhs


ADJOINT_CASES = [
    # rank, strides, padding, dilation_rate, size, kernel_size
    (1, 1, "valid", 1, 7, 3),
    (1, 2, "valid", 1, 8, 3),
    (1, 3, "valid", 1, 8, 2),
    (1, 2, "same", 1, 7, 3),
    (1, 2, "same", 1, 8, 4),
    (1, 3, "same", 1, 7, 1),
    (1, 1, "same", 2, 7, 3),
    (1, 2, "causal", 1, 8, 3),
    (1, 1, "causal", 2, 7, 2),
    (2, 2, "valid", 1, 7, 3),
    (2, 2, "same", 1, 8, 2),
    (2, 1, "same", 2, 7, 3),
    (3, 2, "same", 1, 5, 3),
]


@pytest.mark.parametrize(
    "rank, strides, padding, dilation_rate, size, kernel_size", ADJOINT_CASES
)
def test_is_the_adjoint_of_the_source_convolution(
    rank, strides, padding, dilation_rate, size, kernel_size
):
    rng = np.random.default_rng(0)
    source = CONVS[rank](
        3,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        use_bias=False,
    )
    x = rng.normal(size=_input_shape(rank, size, 2)).astype("float32")
    shape, lhs, rhs = _adjoint_gap(source, x, rng)
    assert shape == x.shape
    np.testing.assert_allclose(rhs, lhs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank, padding", [(1, "same"), (2, "valid")])
def test_is_the_adjoint_for_channels_first(rank, padding):
    rng = np.random.default_rng(1)
    source = CONVS[rank](
        3, 3, strides=2, padding=padding, data_format="channels_first", use_bias=False
    )
    x = rng.normal(size=_input_shape(rank, 7, 2, "channels_first"))
    x = x.astype("float32")
    shape, lhs, rhs = _adjoint_gap(source, x, rng)
    assert shape == x.shape
    np.testing.assert_allclose(rhs, lhs, rtol=1e-4, atol=1e-4)


def _reference_conv1d_transpose(g, kernel, bias, size, strides, padding, dilation):
    """Slow transposed 1-D convolution, straight from the convolution's sum.

    The source computes `y[j] = sum_t x[j * strides + t * dilation - left] @
    kernel[t]`, so each `g[j]` flows back to those input positions.
    """
    kernel_size = kernel.shape[0]
    effective = (kernel_size - 1) * dilation + 1
    steps = g.shape[1]
    if padding == "same":
        total = max((steps - 1) * strides + effective - size, 0)
        left = total // 2
    else:
        left = 0
    out = np.zeros((g.shape[0], size, kernel.shape[1]), "float64")
    for j in range(steps):
        for t in range(kernel_size):
            n = j * strides + t * dilation - left
            if 0 <= n < size:
                out[:, n, :] += g[:, j, :] @ kernel[t].T
    return out + bias


@pytest.mark.parametrize(
    "strides, padding, dilation, size",
    [(2, "same", 1, 7), (2, "valid", 1, 8), (1, "same", 2, 6)],
)
def test_matches_a_slow_numpy_reference(strides, padding, dilation, size):
    rng = np.random.default_rng(2)
    source = keras.layers.Conv1D(
        4, 3, strides=strides, padding=padding, dilation_rate=dilation
    )
    source.build((None, size, 2))
    layer = ConvTranspose(source)
    g_steps = tuple(source.compute_output_shape((None, size, 2)))[1]
    g = rng.normal(size=(3, g_steps, 4)).astype("float32")
    layer.build(g.shape)
    bias = rng.normal(size=(2,)).astype("float32")
    layer.bias.assign(bias)

    expected = _reference_conv1d_transpose(
        g, _np(source.kernel), bias, size, strides, padding, dilation
    )
    np.testing.assert_allclose(_np(layer(g)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, padding", [(7, "valid"), (8, "same")])
def test_output_shape_is_the_source_input_shape(size, padding):
    inputs = keras.Input(shape=(size, size + 1, 3))
    source = keras.layers.Conv2D(5, 3, strides=3, padding=padding)
    layer = ConvTranspose(source)
    outputs = layer(source(inputs))
    assert tuple(outputs.shape) == (None, size, size + 1, 3)
    eager = layer(np.zeros((1,) + tuple(source.output.shape)[1:], "float32"))
    assert tuple(eager.shape) == (1, size, size + 1, 3)


def test_unknown_spatial_size_uses_the_keras_default_output_size():
    inputs = keras.Input(shape=(None, 2))
    source = keras.layers.Conv1D(3, 3, strides=2, padding="same", use_bias=False)
    layer = ConvTranspose(source, use_bias=False)
    symbolic = layer(source(inputs))
    assert tuple(symbolic.shape) == (None, None, 2)
    assert layer.output_padding == (1,)

    g = np.random.default_rng(3).normal(size=(1, 4, 3)).astype("float32")
    outputs = _np(layer(g))
    assert outputs.shape == (1, 8, 2)  # steps * strides, as documented
    expected = keras.ops.conv_transpose(g, source.kernel, 2, padding="same")
    np.testing.assert_allclose(outputs, _np(expected), rtol=1e-6, atol=1e-6)


def test_tie_is_live():
    rng = np.random.default_rng(4)
    source = keras.layers.Conv2D(3, 2, strides=2)
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    g = _np(source(x))
    layer = ConvTranspose(source, bias_initializer="ones")
    before = _np(layer(g))

    source.kernel.assign(2.0 * _np(source.kernel))
    np.testing.assert_allclose(_np(layer(g)), 2.0 * before - 1.0, rtol=1e-5)
    source.kernel.assign(np.zeros(source.kernel.shape, "float32"))
    np.testing.assert_array_equal(_np(layer(g)), np.ones(x.shape, "float32"))


def _linear_loss(y_true, y_pred):
    return keras.ops.sum(y_true * y_pred, axis=(1, 2))


def test_gradients_from_both_uses_reach_the_shared_kernel():
    rng = np.random.default_rng(5)
    inputs = keras.Input(shape=(7, 2))
    source = keras.layers.Conv1D(3, 3, strides=2, padding="same", name="encoder")
    layer = ConvTranspose(source, name="decoder")
    model = keras.Model(inputs, layer(source(inputs)))
    x = rng.normal(size=(4, 7, 2)).astype("float32")
    weights = rng.normal(size=(4, 7, 2)).astype("float32")
    kernel = _np(source.kernel).astype("float64")

    # The loss is quadratic in the kernel (it appears in both layers), so the
    # central difference is its exact derivative whatever the step.
    def loss_at(value):
        source.kernel.assign(value.astype("float32"))
        outputs = _np(model(x)).astype("float64")
        return np.mean(np.sum(weights * outputs, axis=(1, 2)))

    step = 0.5
    gradient = np.zeros_like(kernel)
    for index in np.ndindex(kernel.shape):
        delta = np.zeros_like(kernel)
        delta[index] = step
        gradient[index] = (loss_at(kernel + delta) - loss_at(kernel - delta)) / (
            2 * step
        )
    source.kernel.assign(kernel.astype("float32"))

    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=_linear_loss)
    model.fit(x, weights, batch_size=4, epochs=1, verbose=0, shuffle=False)
    change = _np(source.kernel) - kernel
    np.testing.assert_allclose(change, -gradient, rtol=1e-4, atol=1e-4)


def test_weights_are_own_bias_then_shared_kernel():
    source = keras.layers.Conv2D(4, 3)
    source.build((None, 8, 8, 3))
    layer = ConvTranspose(source)
    layer.build((None, 6, 6, 4))
    assert len(layer.weights) == 2
    assert layer.weights[0] is layer.bias
    assert layer.weights[1] is source.kernel
    assert not any(w is source.bias for w in layer.weights)
    assert len(layer.trainable_weights) == 2
    assert tuple(layer.bias.shape) == (3,)
    assert layer.count_params() == 3

    no_bias = ConvTranspose(source, use_bias=False)
    no_bias.build((None, 6, 6, 4))
    assert len(no_bias.weights) == 1 and no_bias.weights[0] is source.kernel


def test_model_counts_the_shared_kernel_once():
    inputs = keras.Input(shape=(8, 8, 3))
    source = keras.layers.Conv2D(4, 3)
    model = keras.Model(inputs, ConvTranspose(source)(source(inputs)))
    assert model.count_params() == 3 * 3 * 3 * 4 + 4 + 3


def test_lora_source_is_read_with_its_update():
    rng = np.random.default_rng(6)
    source = keras.layers.Conv1D(3, 2, use_bias=False)
    source.build((None, 5, 2))
    base = _np(source.kernel)
    source.enable_lora(1)  # lora_alpha defaults to the rank: a scale of 1
    source.lora_kernel_b.assign(rng.normal(size=(1, 3)).astype("float32"))
    layer = ConvTranspose(source, use_bias=False)
    g = rng.normal(size=(1, 4, 3)).astype("float32")
    kernel = base + _np(source.lora_kernel_a) @ _np(source.lora_kernel_b)
    expected = _reference_conv1d_transpose(g, kernel, 0.0, 5, 1, "valid", 1)
    np.testing.assert_allclose(_np(layer(g)), expected, rtol=1e-5, atol=1e-5)
    assert {id(w) for w in layer.weights} == {id(w) for w in source.weights}


def _autoencoder():
    inputs = keras.Input(shape=(7, 7, 2))
    source = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="encoder")
    hidden = keras.layers.Activation("tanh", name="squash")(source(inputs))
    layer = ConvTranspose(source, activation="relu", name="decoder")
    return keras.Model(inputs, layer(hidden)), layer


def test_passes_the_layer_conformance_checks():
    x = np.random.default_rng(7).normal(size=(2, 7, 7, 2)).astype("float32")
    run_layer_test(
        ConvTranspose,
        x,
        make_model=_autoencoder,
        expected_output_shape=(2, 7, 7, 2),
        expected_num_trainable_weights=2,
        passes_masks=False,
    )


def test_keras_save_and_load_keep_the_tie(tmp_path):
    model, _ = _autoencoder()
    x = np.random.default_rng(8).normal(size=(2, 7, 7, 2)).astype("float32")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)

    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))
    decoder, encoder = loaded.get_layer("decoder"), loaded.get_layer("encoder")
    assert decoder.source is encoder
    assert decoder.output_padding == (0, 0)
    assert len(loaded.weights) == 3
    encoder.kernel.assign(np.zeros(encoder.kernel.shape, "float32"))
    np.testing.assert_array_equal(
        _np(loaded(x)), np.maximum(_np(decoder.bias), 0.0) * np.ones_like(x)
    )


@pytest.mark.parametrize(
    "rebuild",
    [keras.models.clone_model, lambda m: keras.Model.from_config(m.get_config())],
    ids=["clone_model", "from_config"],
)
def test_rebuilding_the_model_keeps_the_tie(rebuild):
    model, original = _autoencoder()
    copy = rebuild(model)
    decoder = copy.get_layer("decoder")
    assert decoder.source is copy.get_layer("encoder")
    assert decoder.source is not original.source
    assert original.source is model.get_layer("encoder")
    x = np.zeros((1, 7, 7, 2), "float32")
    assert tuple(copy(x).shape) == (1, 7, 7, 2)


def test_refuses_a_source_that_is_not_a_convolution():
    with pytest.raises(TypeError, match=r"`source`.*Received: source=.*Dense"):
        ConvTranspose(keras.layers.Dense(3))


def test_refuses_a_transposed_convolution_source():
    with pytest.raises(TypeError, match=r"already a transposed convolution"):
        ConvTranspose(keras.layers.Conv2DTranspose(3, 3))


def test_refuses_a_grouped_convolution():
    with pytest.raises(ValueError, match=r"groups=1.*groups=2"):
        ConvTranspose(keras.layers.Conv2D(4, 3, groups=2))


def test_refuses_a_source_quantized_in_an_unsupported_mode():
    class QuantizedConv(keras.layers.Conv1D):
        quantization_mode = "gptq"

    with pytest.raises(ValueError, match=r"quantized with mode 'gptq'"):
        ConvTranspose(QuantizedConv(2, 3))


def test_refuses_an_unbuilt_source_when_called():
    layer = ConvTranspose(keras.layers.Conv1D(2, 3))
    with pytest.raises(ValueError, match=r"not built yet"):
        layer(np.zeros((1, 5, 2), "float32"))


def test_refuses_inputs_with_the_wrong_channel_count():
    source = keras.layers.Conv2D(4, 3)
    source.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match=r"4 channels.*input_shape=\(1, 6, 6, 5\)"):
        ConvTranspose(source)(np.zeros((1, 6, 6, 5), "float32"))


def test_refuses_inputs_of_the_wrong_rank():
    source = keras.layers.Conv2D(4, 3)
    source.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match=r"expected ndim=4, found ndim=3"):
        ConvTranspose(source)(np.zeros((1, 6, 4), "float32"))


def test_output_padding_restores_the_dropped_remainder():
    # A strided "valid" convolution drops (size - kernel) % strides positions.
    for size in range(5, 12):
        source = keras.layers.Conv1D(1, 3, strides=3)
        source.build((None, size, 1))
        assert ConvTranspose(source).output_padding == ((size - 3) % 3,)
        same = keras.layers.Conv1D(1, 3, strides=3, padding="same")
        same.build((None, size, 1))
        steps = math.ceil(size / 3)
        assert (steps - 1) * 3 + 1 + ConvTranspose(same).output_padding[0] == size
