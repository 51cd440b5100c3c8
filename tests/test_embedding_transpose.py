import os

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether.layers import EmbeddingTranspose


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _embedding(input_dim=11, output_dim=4, **kwargs):
    layer = keras.layers.Embedding(input_dim, output_dim, **kwargs)
    layer.build()
    table = np.random.default_rng(0).normal(size=(input_dim, output_dim))
    layer.embeddings.assign(table.astype("float32"))
    return layer


@pytest.mark.parametrize("shape", [(3, 4), (2, 5, 4)])
def test_matches_the_numpy_formula(shape):
    rng = np.random.default_rng(1)
    source = _embedding()
    layer = EmbeddingTranspose(source, use_bias=True)
    h = rng.normal(size=shape).astype("float32")
    layer.build(h.shape)
    bias = rng.normal(size=(11,)).astype("float32")
    layer.bias.assign(bias)

    expected = h.astype("float64") @ _np(source.embeddings).T + bias
    np.testing.assert_allclose(_np(layer(h)), expected, rtol=1e-5, atol=1e-5)


def test_soft_cap_follows_the_formula():
    rng = np.random.default_rng(2)
    source = _embedding()
    layer = EmbeddingTranspose(
        source, use_bias=True, bias_initializer="ones", logit_soft_cap=2.5
    )
    h = 3.0 * rng.normal(size=(6, 4)).astype("float32")
    logits = h.astype("float64") @ _np(source.embeddings).T + 1.0
    expected = 2.5 * np.tanh(logits / 2.5)
    outputs = _np(layer(h))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(outputs).max() < 2.5 < np.abs(logits).max()


@pytest.mark.parametrize("logit_soft_cap", [None, 3.0])
def test_matches_a_tied_reversible_embedding(logit_soft_cap):
    rng = np.random.default_rng(3)
    source = keras.layers.ReversibleEmbedding(
        13, 6, tie_weights=True, logit_soft_cap=logit_soft_cap
    )
    source.build()
    source.embeddings.assign(rng.normal(size=(13, 6)).astype("float32"))
    layer = EmbeddingTranspose(source, logit_soft_cap=logit_soft_cap)
    h = rng.normal(size=(2, 3, 6)).astype("float32")
    np.testing.assert_allclose(
        _np(layer(h)), _np(source(h, reverse=True)), rtol=1e-6, atol=1e-6
    )
    assert len(layer.weights) == 1 and layer.weights[0] is source.embeddings


def test_untied_reversible_embedding_reads_its_input_table_only():
    rng = np.random.default_rng(4)
    source = keras.layers.ReversibleEmbedding(7, 3, tie_weights=False)
    source.build()
    table = rng.normal(size=(7, 3)).astype("float32")
    source.embeddings.assign(table)
    layer = EmbeddingTranspose(source)
    h = rng.normal(size=(2, 3)).astype("float32")
    np.testing.assert_allclose(_np(layer(h)), h @ table.T, rtol=1e-5, atol=1e-6)
    assert [w is source.embeddings for w in layer.weights] == [True]
    assert len(source.weights) == 2  # its reverse_embeddings stay its own


def test_mixed_precision_logits_dtype():
    rng = np.random.default_rng(5)
    keras.config.set_dtype_policy("mixed_float16")
    source = keras.layers.Embedding(50, 64)
    source.build()
    table = rng.normal(scale=0.3, size=(50, 64)).astype("float32")
    source.embeddings.assign(table)
    h = rng.normal(size=(4, 64)).astype("float32")
    reference = h.astype("float64") @ table.T.astype("float64")

    full = EmbeddingTranspose(source, logits_dtype="float32")
    outputs = full(h)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    np.testing.assert_allclose(_np(outputs), reference, rtol=1e-5, atol=1e-5)
    assert source.embeddings.dtype == "float32"

    half = EmbeddingTranspose(source)(h)
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    # Half precision misses the tolerance above: the check there can fail.
    assert np.abs(_np(half).astype("float64") - reference).max() > 1e-3

    inputs = keras.Input(shape=(64,))
    symbolic = full(inputs)
    assert keras.backend.standardize_dtype(symbolic.dtype) == "float32"
    in_model = _np(keras.Model(inputs, symbolic)(h))
    np.testing.assert_allclose(in_model, reference, rtol=1e-5, atol=1e-5)


def test_builds_an_unbuilt_source():
    source = keras.layers.Embedding(9, 3)
    assert not source.built
    layer = EmbeddingTranspose(source)
    assert source.built
    assert tuple(source.embeddings.shape) == (9, 3)
    assert tuple(layer(np.ones((2, 3), "float32")).shape) == (2, 9)


def test_tie_is_live():
    rng = np.random.default_rng(6)
    source = _embedding()
    layer = EmbeddingTranspose(source)
    h = rng.normal(size=(2, 4)).astype("float32")
    new_table = rng.normal(size=(11, 4)).astype("float32")
    source.embeddings.assign(new_table)
    np.testing.assert_allclose(_np(layer(h)), h @ new_table.T, rtol=1e-5, atol=1e-6)


def test_lora_source_is_read_with_its_update():
    rng = np.random.default_rng(7)
    source = _embedding()
    source.enable_lora(2)
    source.lora_embeddings_b.assign(rng.normal(size=(2, 4)).astype("float32"))
    table = np.random.default_rng(0).normal(size=(11, 4)).astype("float32")
    scale = source.lora_alpha / source.lora_rank
    table = table + scale * _np(source.lora_embeddings_a) @ _np(
        source.lora_embeddings_b
    )
    layer = EmbeddingTranspose(source)
    h = rng.normal(size=(2, 4)).astype("float32")
    np.testing.assert_allclose(_np(layer(h)), h @ table.T, rtol=1e-5, atol=1e-5)
    assert {id(w) for w in layer.weights} == {id(w) for w in source.weights}


def _language_model(use_bias=True):
    tokens = keras.Input(shape=(5,), dtype="int32")
    source = keras.layers.Embedding(11, 4, name="embedding")
    hidden = keras.layers.Activation("tanh", name="squash")(source(tokens))
    layer = EmbeddingTranspose(source, use_bias=use_bias, name="head")
    return keras.Model(tokens, layer(hidden)), layer


def test_weights_are_own_bias_then_shared_table():
    model, layer = _language_model()
    source = model.get_layer("embedding")
    assert len(layer.weights) == 2
    assert layer.weights[0] is layer.bias
    assert layer.weights[1] is source.embeddings
    assert tuple(layer.bias.shape) == (11,)
    assert layer.count_params() == 11
    assert model.count_params() == 11 * 4 + 11


def _linear_loss(y_true, y_pred):
    return keras.ops.sum(y_true * y_pred, axis=(1, 2))


def test_gradients_from_both_uses_reach_the_shared_table():
    rng = np.random.default_rng(8)
    tokens = keras.Input(shape=(3,), dtype="int32")
    source = keras.layers.Embedding(6, 2)
    model = keras.Model(tokens, EmbeddingTranspose(source)(source(tokens)))
    ids = rng.integers(0, 6, size=(4, 3)).astype("int32")
    weights = rng.normal(size=(4, 3, 6)).astype("float32")
    table = _np(source.embeddings).astype("float64")

    # loss = mean_b sum_{t,v} w[b,t,v] * <E[ids[b,t]], E[v]>, differentiated
    # through the head (E[v]) and through the lookup (E[ids[b,t]]).
    head = np.einsum("btv,btd->vd", weights, table[ids])
    lookup = np.zeros_like(table)
    np.add.at(lookup, ids, np.einsum("btv,vd->btd", weights, table))
    gradient = (head + lookup) / len(ids)

    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=_linear_loss)
    model.fit(ids, weights, batch_size=4, epochs=1, verbose=0)
    change = _np(source.embeddings) - table
    np.testing.assert_allclose(change, -gradient, rtol=1e-4, atol=1e-5)


def test_passes_the_layer_conformance_checks():
    ids = np.random.default_rng(9).integers(0, 11, size=(3, 5)).astype("int32")
    run_layer_test(
        EmbeddingTranspose,
        ids,
        make_model=_language_model,
        expected_output_shape=(3, 5, 11),
        expected_num_trainable_weights=2,
        passes_masks=True,
    )


def test_keras_save_and_load_keep_the_tie(tmp_path):
    model, layer = _language_model()
    layer.bias.assign(np.arange(11, dtype="float32"))
    ids = np.random.default_rng(10).integers(0, 11, size=(2, 5)).astype("int32")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)

    np.testing.assert_array_equal(_np(loaded(ids)), _np(model(ids)))
    head, source = loaded.get_layer("head"), loaded.get_layer("embedding")
    assert head.source is source
    assert len(loaded.weights) == 2
    source.embeddings.assign(np.zeros((11, 4), "float32"))
    expected = np.broadcast_to(np.arange(11, dtype="float32"), (2, 5, 11))
    np.testing.assert_array_equal(_np(loaded(ids)), expected)


@pytest.mark.parametrize(
    "rebuild",
    [keras.models.clone_model, lambda m: keras.Model.from_config(m.get_config())],
    ids=["clone_model", "from_config"],
)
def test_rebuilding_the_model_keeps_the_tie(rebuild):
    model, original = _language_model()
    copy = rebuild(model)
    head = copy.get_layer("head")
    assert head.source is copy.get_layer("embedding")
    assert head.source is not original.source
    assert original.source is model.get_layer("embedding")
    assert tuple(copy(np.zeros((1, 5), "int32")).shape) == (1, 5, 11)


def test_config_holds_the_arguments():
    layer = EmbeddingTranspose(
        _embedding(), logit_soft_cap=30.0, logits_dtype="float32", use_bias=True
    )
    config = layer.get_config()
    assert config["logit_soft_cap"] == 30.0
    assert config["logits_dtype"] == "float32"
    assert config["use_bias"] is True
    revived = EmbeddingTranspose.from_config(config)
    assert revived.logit_soft_cap == 30.0 and revived.logits_dtype == "float32"


def test_refuses_a_source_that_is_not_an_embedding():
    with pytest.raises(TypeError, match=r"`source`.*Received: source=.*Dense"):
        EmbeddingTranspose(keras.layers.Dense(3))


@pytest.mark.parametrize(
    "cap, error",
    [(0, ValueError), (-1.0, ValueError), (float("inf"), ValueError)]
    + [(float("nan"), ValueError), ("10", TypeError), (True, TypeError)],
)
def test_refuses_a_bad_soft_cap(cap, error):
    with pytest.raises(error, match=r"`logit_soft_cap`.*logit_soft_cap="):
        EmbeddingTranspose(_embedding(), logit_soft_cap=cap)


@pytest.mark.parametrize("dtype", ["int32", "floaty", 3])
def test_refuses_a_bad_logits_dtype(dtype):
    with pytest.raises(ValueError, match=rf"logits_dtype={dtype!r}"):
        EmbeddingTranspose(_embedding(), logits_dtype=dtype)


def test_int8_source_is_read_through_its_row_scales():
    source = _embedding()
    source.quantize("int8")
    layer = EmbeddingTranspose(source)
    table = _np(source.embeddings).astype("float64")
    table = table / _np(source.embeddings_scale).astype("float64")[:, None]
    y = np.random.default_rng(5).normal(size=(3, table.shape[1])).astype("float32")
    np.testing.assert_allclose(_np(layer(y)), y @ table.T, rtol=1e-5, atol=1e-5)


def test_refuses_inputs_of_the_wrong_size():
    layer = EmbeddingTranspose(_embedding())
    with pytest.raises(ValueError, match=r"output_dim=4.*input_shape=\(2, 5\)"):
        layer(np.ones((2, 5), "float32"))
