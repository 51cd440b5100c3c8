import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether.layers import DenseTranspose, TiedDense


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _built_dense(units=3, input_dim=5, **kwargs):
    dense = keras.layers.Dense(units, **kwargs)
    dense.build((None, input_dim))
    return dense


def test_output_matches_numpy_formula_for_a_non_square_kernel():
    rng = np.random.default_rng(0)
    source = _built_dense(3, 5)
    kernel = rng.normal(size=(5, 3)).astype("float32")
    source.kernel.assign(kernel)
    layer = DenseTranspose(source, activation="tanh", bias_initializer="ones")
    x = rng.normal(size=(4, 3)).astype("float32")
    expected = np.tanh(x @ kernel.T + 1.0)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-6)
    assert tuple(layer.bias.shape) == (5,)


def test_reads_the_live_kernel_not_a_copy():
    source = _built_dense(2, 4)
    layer = DenseTranspose(source, use_bias=False)
    x = np.ones((1, 2), dtype="float32")
    layer(x)
    new_kernel = np.arange(8, dtype="float32").reshape(4, 2)
    source.kernel.assign(new_kernel)
    np.testing.assert_allclose(_np(layer(x)), x @ new_kernel.T)


def test_gradient_reaches_the_shared_kernel_from_both_uses():
    # Loss L = sum(decoder(encoder(x))) with linear layers and no biases:
    # y = x W W^T, dL/dW = x^T 1 W + 1^T x W... computed by finite differences.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4)).astype("float32")
    kernel = rng.normal(size=(4, 2)).astype("float32")
    target = rng.normal(size=(3, 4)).astype("float32")

    def loss_np(w):
        y = x.astype("float64") @ w @ w.T
        return np.mean((y - target) ** 2)

    eps = 1e-4
    w64 = kernel.astype("float64")
    grad = np.zeros_like(w64)
    for index in np.ndindex(*w64.shape):
        step = np.zeros_like(w64)
        step[index] = eps
        grad[index] = (loss_np(w64 + step) - loss_np(w64 - step)) / (2 * eps)

    encoder = keras.layers.Dense(2, use_bias=False)
    decoder = DenseTranspose(encoder, use_bias=False)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    encoder.kernel.assign(kernel)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.train_on_batch(x, target)
    step_taken = kernel - _np(encoder.kernel)
    np.testing.assert_allclose(step_taken, grad, rtol=1e-3, atol=1e-5)


def test_weights_list_own_bias_and_shared_kernel_only():
    source = _built_dense(3, 5)
    layer = DenseTranspose(source)
    layer.build((None, 3))
    assert [id(w) for w in layer.weights] == [id(layer.bias), id(source.kernel)]
    assert id(source.bias) not in {id(w) for w in layer.weights}
    assert layer.count_params() == 5  # its own bias only


def test_tie_trains_when_the_source_is_never_called():
    source = _built_dense(3, 5)
    layer = DenseTranspose(source)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, layer(inputs))
    assert any(w is source.kernel for w in model.trainable_weights)
    before = _np(source.kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(np.ones((2, 3), "float32"), np.zeros((2, 5), "float32"))
    assert not np.allclose(before, _np(source.kernel))


def test_trainable_false_freezes_only_the_tied_layers_own_variables():
    encoder = keras.layers.Dense(2)
    decoder = DenseTranspose(encoder)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    decoder.trainable = False
    assert encoder.trainable and encoder.kernel.trainable
    trainable = {id(w) for w in model.trainable_weights}
    assert id(encoder.kernel) in trainable
    assert id(decoder.bias) not in trainable
    bias_before = _np(decoder.bias).copy()
    kernel_before = _np(encoder.kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(np.ones((2, 4), "float32"), np.full((2, 4), 3.0, "float32"))
    np.testing.assert_array_equal(_np(decoder.bias), bias_before)
    assert not np.allclose(_np(encoder.kernel), kernel_before)


def test_freezing_the_source_freezes_the_tie():
    encoder = keras.layers.Dense(2)
    decoder = DenseTranspose(encoder)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    encoder.trainable = False
    trainable = {id(w) for w in model.trainable_weights}
    assert id(encoder.kernel) not in trainable
    assert id(decoder.bias) in trainable


def test_summary_rows_add_up_to_the_model_total():
    encoder = keras.layers.Dense(3)
    decoder = DenseTranspose(encoder)
    inputs = keras.Input((7,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    rows = sum(layer.count_params() for layer in model.layers)
    assert model.count_params() == 7 * 3 + 3 + 7
    assert rows == model.count_params()
    lines = []
    model.summary(print_fn=lines.append)
    assert "31" in "".join(lines)


def test_lora_source_is_read_with_its_update():
    rng = np.random.default_rng(2)
    source = _built_dense(3, 4, use_bias=False)
    source.enable_lora(2)
    source.lora_kernel_b.assign(rng.normal(size=(2, 3)).astype("float32"))
    layer = DenseTranspose(source, use_bias=False)
    x = rng.normal(size=(2, 3)).astype("float32")
    effective = _np(source._kernel) + (source.lora_alpha / source.lora_rank) * _np(
        source.lora_kernel_a
    ) @ _np(source.lora_kernel_b)
    np.testing.assert_allclose(_np(layer(x)), x @ effective.T, rtol=1e-5, atol=1e-5)
    shared = {id(w) for w in layer.shared_variables()}
    assert shared == {
        id(source._kernel),
        id(source.lora_kernel_a),
        id(source.lora_kernel_b),
    }


def _dequantized_kernel(source):
    """The float kernel an int8 / per-channel int4 Dense computes with, in numpy."""
    stored = _np(source.kernel).astype("float64")
    scale = _np(source.kernel_scale).astype("float64").reshape(1, -1)
    return stored / scale


def _int4_config(block_size):
    """Keras' int4 config with `block_size`; `None` before Keras 3.14.

    Keras 3.13's int4 is per-channel only, and its config takes no
    `block_size`.
    """
    try:
        return keras.quantizers.Int4QuantizationConfig(block_size=block_size)
    except TypeError:
        return None


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_source_is_read_through_its_scales(mode):
    source = _built_dense(4, 8, use_bias=False)
    float_kernel = _np(source.kernel).copy()
    if mode == "int4":  # per-channel: one scale per output unit
        source.quantize(mode, config=_int4_config(block_size=-1))
    else:
        source.quantize(mode)
    layer = DenseTranspose(source)
    y = np.random.default_rng(3).normal(size=(5, 4)).astype("float32")
    outputs = _np(layer(y))
    kernel = _dequantized_kernel(source)
    # The dequantized kernel is the float one up to half a quantization step.
    levels = 127 if mode == "int8" else 7
    step = np.abs(float_kernel).max(axis=0) / levels
    assert np.all(np.abs(kernel - float_kernel) <= step[None, :] / 2 + 1e-6)
    expected = y @ kernel.T + _np(layer.bias)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_float8_source_is_read_as_it_is():
    source = _built_dense(4, 8, use_bias=False)
    source.quantize("float8")
    layer = DenseTranspose(source, use_bias=False)
    y = np.ones((2, 4), "float32")
    np.testing.assert_allclose(
        _np(layer(y)), y @ _np(source.kernel).T, rtol=1e-6, atol=1e-6
    )


def test_source_quantized_after_tying_keeps_the_tie_computing():
    source = _built_dense(4, 8, use_bias=False)
    layer = DenseTranspose(source, use_bias=False)
    y = np.ones((1, 4), "float32")
    layer(y)
    source.quantize("int8")
    np.testing.assert_allclose(
        _np(layer(y)), y @ _dequantized_kernel(source).T, rtol=1e-5, atol=1e-5
    )


def test_model_quantize_keeps_a_tied_autoencoder_working():
    encoder = keras.layers.Dense(3, name="encoder")
    decoder = DenseTranspose(encoder, name="decoder")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    x = np.random.default_rng(4).normal(size=(8, 6)).astype("float32")
    float_output = _np(model.predict(x, verbose=0))
    model.quantize("int8")
    code = _np(encoder(x))
    expected = code @ _dequantized_kernel(encoder).T + _np(decoder.bias)
    output = _np(model.predict(x, verbose=0))
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
    # Still the autoencoder it was, up to int8 rounding.
    np.testing.assert_allclose(output, float_output, atol=0.1)


def test_grouped_int4_source_is_refused_with_the_mode():
    config = _int4_config(block_size=4)
    if config is None:
        pytest.skip(f"Keras {keras.__version__} has no grouped int4")
    source = _built_dense(4, 8, use_bias=False)
    source.quantize("int4", config=config)
    layer = DenseTranspose(source, use_bias=False)
    with pytest.raises(ValueError, match=r"quantized with mode 'int4'.*filters"):
        layer(np.ones((1, 4), "float32"))


def test_wrong_source_type_names_the_argument():
    with pytest.raises(TypeError, match=r"`source`.*Received: source="):
        DenseTranspose(keras.layers.Embedding(10, 3))
    with pytest.raises(TypeError, match="`source`"):
        DenseTranspose("dense")


def test_unbuilt_source_gives_a_clear_error():
    layer = DenseTranspose(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="not built"):
        layer(np.ones((1, 3), "float32"))


def test_input_dimension_mismatch_names_the_shape():
    layer = DenseTranspose(_built_dense(3, 5))
    with pytest.raises(ValueError, match=r"last dimension must be 3.*input_shape"):
        layer(np.ones((2, 4), "float32"))


def test_transform_and_weight_are_fixed():
    with pytest.raises(TypeError, match="TiedDense"):
        DenseTranspose(_built_dense(), transform="identity")


def test_tied_dense_identity_shares_one_kernel():
    first = keras.layers.Dense(3, use_bias=False)
    second = TiedDense(first, use_bias=False)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, second(first(inputs)))
    kernel = _np(first.kernel)
    x = np.random.default_rng(3).normal(size=(2, 3)).astype("float32")
    np.testing.assert_allclose(_np(model(x)), x @ kernel @ kernel, rtol=1e-5)
    assert model.count_params() == 9


def test_tied_dense_reads_an_embedding_table_as_an_output_head():
    embedding = keras.layers.Embedding(11, 4)
    head = TiedDense(embedding, weight="embeddings", transform="transpose")
    tokens = keras.Input((5,), dtype="int32")
    logits = head(embedding(tokens))
    model = keras.Model(tokens, logits)
    assert tuple(model.output.shape) == (None, 5, 11)
    x = np.arange(10).reshape(2, 5) % 11
    table = _np(embedding.embeddings)
    np.testing.assert_allclose(
        _np(model(x)), table[x] @ table.T + _np(head.bias), rtol=1e-5, atol=1e-6
    )


def test_tied_dense_unknown_transform_and_weight():
    with pytest.raises(ValueError, match=r"Unknown transform.*transform='flip'"):
        TiedDense(_built_dense(), transform="flip")
    layer = TiedDense(_built_dense(), weight="kernal")
    with pytest.raises(ValueError, match="no weight 'kernal'"):
        layer(np.ones((1, 5), "float32"))
    layer = TiedDense(_built_dense(), weight="kernel_initializer")
    with pytest.raises(ValueError, match="no weight 'kernel_initializer'.*Glorot"):
        layer(np.ones((1, 5), "float32"))


@pytest.mark.parametrize("value", ["no", 1, None])
def test_use_bias_must_be_a_boolean(value):
    with pytest.raises(TypeError, match=rf"`use_bias`.*use_bias={value!r}"):
        DenseTranspose(_built_dense(), use_bias=value)


def test_conformance_in_a_functional_model():
    def make_model():
        encoder = keras.layers.Dense(3, activation="relu")
        decoder = DenseTranspose(encoder, activation="sigmoid")
        inputs = keras.Input((4, 6))
        return keras.Model(inputs, decoder(encoder(inputs))), decoder

    run_layer_test(
        DenseTranspose,
        np.random.default_rng(4).normal(size=(8, 4, 6)).astype("float32"),
        make_model=make_model,
        expected_output_shape=(8, 4, 6),
        expected_num_trainable_weights=2,
        passes_masks=True,
    )


def test_a_mask_entering_the_layer_leaves_it():
    encoder = _built_dense(3, 5)
    inputs = keras.Input((4, 3))
    decoded = DenseTranspose(encoder, use_bias=False)(keras.layers.Masking()(inputs))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(decoded))
    y = np.random.default_rng(6).normal(size=(2, 4, 3)).astype("float32")
    y[0, 2:] = 0.0  # masked steps
    y[1, 3:] = 0.0
    steps = y @ _np(encoder.kernel).T
    expected = np.stack([steps[0, :2].mean(0), steps[1, :3].mean(0)])
    np.testing.assert_allclose(_np(model(y)), expected, rtol=1e-5, atol=1e-6)
