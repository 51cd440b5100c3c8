import keras
import numpy as np
import pytest

from keras_tether import parametrize, ties
from keras_tether.layers import Parametrized, ReversibleDense
from tests.layer_conformance import run_layer_test


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _data(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _tied_model(layer, input_dim):
    inputs = keras.Input((input_dim,))
    return keras.Model(inputs, layer(layer(inputs), reverse=True))


def test_conformance_forward():
    run_layer_test(
        ReversibleDense,
        _data(4, 5),
        init_kwargs={"units": 3, "activation": "tanh", "reverse_use_bias": False},
        expected_output_shape=(4, 3),
        expected_num_trainable_weights=2,
    )


def test_conformance_both_directions():
    def make_model():
        layer = ReversibleDense(3, activation="relu", reverse_activation="sigmoid")
        return _tied_model(layer, 5), layer

    run_layer_test(
        ReversibleDense,
        _data(4, 5),
        make_model=make_model,
        expected_output_shape=(4, 5),
        expected_num_trainable_weights=3,
    )


def test_both_directions_match_numpy():
    layer = ReversibleDense(
        3,
        activation="relu",
        reverse_activation="tanh",
        bias_initializer="random_normal",
        reverse_bias_initializer="random_normal",
    )
    x = _data(4, 5)
    code = _np(layer(x))
    kernel, bias, reverse_bias = (
        _np(w) for w in (layer.kernel, layer.bias, layer.reverse_bias)
    )
    np.testing.assert_allclose(
        code, np.maximum(x @ kernel + bias, 0), rtol=1e-5, atol=1e-6
    )
    y = _data(4, 3, seed=1)
    np.testing.assert_allclose(
        _np(layer(y, reverse=True)),
        np.tanh(y @ kernel.T + reverse_bias),
        rtol=1e-5,
        atol=1e-6,
    )


def test_forward_is_exactly_dense():
    layer = ReversibleDense(3, activation="relu")
    dense = keras.layers.Dense(3, activation="relu")
    x = _data(4, 5)
    layer.build((None, 5))
    dense.build((None, 5))
    dense.set_weights(layer.get_weights()[:2])
    np.testing.assert_array_equal(_np(layer(x)), _np(dense(x)))


def test_one_kernel_counted_once_and_trained_from_both_directions():
    layer = ReversibleDense(3, reverse_use_bias=False, use_bias=False)
    model = _tied_model(layer, 5)
    assert model.count_params() == 15 == ties.count_params(model)
    x = _data(8, 5)
    kernel = _np(layer.kernel)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(x, x)
    # d/dW mean((x W W^T - x)^2) reaches W through both products.
    residual = x @ kernel @ kernel.T - x
    grad = 2 * (x.T @ residual @ kernel + residual.T @ x @ kernel) / residual.size
    np.testing.assert_allclose(
        _np(layer.kernel), kernel - 0.1 * grad, rtol=1e-4, atol=1e-5
    )


def test_no_reverse_bias():
    layer = ReversibleDense(3, reverse_use_bias=False)
    layer.build((None, 5))
    assert layer.reverse_bias is None
    assert [w.name for w in layer.weights] == ["kernel", "bias"]
    y = _data(2, 3)
    np.testing.assert_allclose(
        _np(layer(y, reverse=True)), y @ _np(layer.kernel).T, rtol=1e-5, atol=1e-6
    )


def test_masks_pass_both_ways():
    inputs = keras.Input((4, 5))
    masked = keras.layers.Masking(0.0)(inputs)
    layer = ReversibleDense(3)
    model = keras.Model(inputs, layer(layer(masked), reverse=True))
    x = _data(2, 4, 5)
    x[0, 1] = 0.0
    x[1, 3] = 0.0
    code = layer(masked)
    back = layer(code, reverse=True)
    assert code._keras_mask is not None and back._keras_mask is not None
    np.testing.assert_array_equal(
        _np(model.layers[-1].compute_mask(x, keras.ops.not_equal(x[..., 0], 0))),
        np.not_equal(x[..., 0], 0),
    )


def test_reverse_before_build_is_refused():
    layer = ReversibleDense(3)
    with pytest.raises(ValueError, match="must be built before.*reverse=True"):
        layer(_data(2, 3), reverse=True)
    layer.build((None, 5))
    assert tuple(layer(_data(2, 3), reverse=True).shape) == (2, 5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"units": 0}, ValueError, "units=0"),
        ({"units": 2, "reverse_use_bias": "yes"}, TypeError, "reverse_use_bias='yes'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReversibleDense(**kwargs)


def test_bad_calls():
    layer = ReversibleDense(3)
    layer.build((None, 5))
    with pytest.raises(
        ValueError, match=r"3 features \(units\).*inputs.shape=\(2, 4\)"
    ):
        layer(_data(2, 4), reverse=True)
    with pytest.raises(ValueError, match=r"5 features \(input_dim\)"):
        layer(_data(2, 3))
    with pytest.raises(TypeError, match="reverse=1"):
        layer(_data(2, 5), reverse=1)


def test_compute_output_shape_both_directions():
    layer = ReversibleDense(3)
    layer.build((None, 7, 5))
    assert layer.compute_output_shape((None, 7, 5)) == (None, 7, 3)
    assert layer.compute_output_shape((None, 7, 3), reverse=True) == (None, 7, 5)


def test_get_config_round_trip_keeps_reverse_arguments():
    layer = ReversibleDense(
        3,
        reverse_activation="sigmoid",
        reverse_use_bias=False,
        reverse_bias_initializer="ones",
        reverse_bias_regularizer="l2",
        reverse_bias_constraint="non_neg",
    )
    config = layer.get_config()
    revived = ReversibleDense.from_config(config)
    assert revived.get_config() == config
    assert config["reverse_activation"] == "sigmoid"
    assert config["reverse_use_bias"] is False


def test_lora_acts_on_both_directions():
    layer = ReversibleDense(3, use_bias=False, reverse_use_bias=False)
    layer.build((None, 5))
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(_data(2, 3, seed=3))
    effective = _np(layer._kernel) + _np(layer.lora_kernel_a) @ _np(layer.lora_kernel_b)
    x, y = _data(4, 5), _data(4, 3, seed=1)
    np.testing.assert_allclose(_np(layer(x)), x @ effective, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        _np(layer(y, reverse=True)), y @ effective.T, rtol=1e-5, atol=1e-5
    )
    # Only the low-rank factors train.
    assert [w.name for w in layer.trainable_weights] == [
        "lora_kernel_a",
        "lora_kernel_b",
    ]


def test_int8_quantization_reads_the_quantized_kernel_both_ways():
    layer = ReversibleDense(4, reverse_use_bias=True, reverse_bias_initializer="ones")
    model = _tied_model(layer, 6)
    model.quantize("int8")
    assert layer.quantization_mode == "int8"
    quantized = _np(layer._kernel).astype("float32")
    scale = _np(layer.kernel_scale)
    dequantized = quantized / scale
    y = _data(3, 4, seed=2)
    np.testing.assert_allclose(
        _np(layer(y, reverse=True)), y @ dequantized.T + 1.0, rtol=1e-5, atol=1e-5
    )
    # Forward: Keras' int8 path (inputs quantized too), close to the float product.
    x = _data(3, 6)
    np.testing.assert_allclose(
        _np(layer(x)), x @ dequantized + _np(layer.bias), atol=0.05
    )
    assert ties.list_ties(model)[0].uses == ("forward", "reverse")


def test_int8_quantized_model_saves_and_loads(tmp_path):
    layer = ReversibleDense(4, reverse_bias_initializer="random_normal")
    model = _tied_model(layer, 6)
    model.quantize("int8")
    x = _data(3, 6)
    expected = _np(model(x))
    path = str(tmp_path / "quantized.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_np(loaded(x)), expected)


def test_other_quantization_modes_are_refused():
    layer = ReversibleDense(4)
    layer.build((None, 6))
    with pytest.raises(NotImplementedError, match="mode='int4'"):
        layer.quantize("int4")


def test_mixed_precision_both_directions():
    layer = ReversibleDense(4, dtype="mixed_float16")
    model = _tied_model(layer, 6)
    assert layer.kernel.dtype == "float32"
    out = model(_data(3, 6))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    y = _data(3, 4)
    expected = y @ _np(layer.kernel).T + _np(layer.reverse_bias)
    np.testing.assert_allclose(
        _np(layer(y, reverse=True)), expected, rtol=1e-2, atol=1e-2
    )


def test_parametrized_orthogonal_tied_autoencoder_reconstructs_exactly():
    layer = ReversibleDense(6, use_bias=False, reverse_use_bias=False)
    wrapper = Parametrized(layer, {"kernel": parametrize.Orthogonal()})
    inputs = keras.Input((6,))
    model = keras.Model(inputs, wrapper(wrapper(inputs), reverse=True))
    x = _data(5, 6)
    np.testing.assert_allclose(_np(model(x)), x, rtol=1e-4, atol=1e-4)
    # The reverse direction reads the constrained kernel, not the free one.
    kernel = _np(wrapper.parametrized_weight("kernel"))
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(6), atol=1e-5)
    y = _data(2, 6, seed=4)
    np.testing.assert_allclose(
        _np(wrapper(y, reverse=True)), y @ kernel.T, rtol=1e-4, atol=1e-5
    )


def test_list_ties_reports_each_layer_once_with_both_uses():
    model = ties.tied_autoencoder(input_dim=7, units=[3])
    (tie,) = ties.list_ties(model)
    assert tie.layer == "tied_dense_0" and tie.layer_class == "ReversibleDense"
    assert tie.shapes == ((7, 3),)
    assert tie.uses == ("forward", "reverse")
    assert tie.variables[0].endswith("tied_dense_0/kernel")


def test_summary_shows_the_layer_once_and_counts_the_kernel_once():
    model = ties.tied_autoencoder(input_dim=7, units=[3])
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    out = "\n".join(lines)
    assert out.count("(ReversibleDense)") == 1
    assert "Total params: 31" in out  # 7*3 kernel once + 3 + 7 biases
