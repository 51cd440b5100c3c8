"""One-call conformance check for keras-tether layers, on the public Keras API only.

`run_layer_test` builds a small model around a layer and checks, in order: the
config round trip, a symbolic call, an eager call, weight counts, one `fit` step
that moves every trainable weight, a mixed-precision call, and a `.keras`
save/load (with `safe_mode=True`) that reproduces the outputs exactly; also a
JSON config round trip and, with `passes_masks`, masking.

Layers whose constructor takes another layer (tied layers) pass `make_model`
instead of `init_kwargs`: a callable returning `(model, layer)` for a model that
holds the layer, so every check runs on the model as a user would save it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence

import keras
import numpy as np


def _as_list(data):
    return list(data) if isinstance(data, list | tuple) else [data]


def _inputs_for(data):
    return [keras.Input(shape=np.shape(x)[1:], dtype=str(x.dtype)) for x in data]


def _call_arg(items):
    return items if len(items) > 1 else items[0]


def _to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def run_layer_test(
    layer_cls: type[keras.layers.Layer],
    input_data,
    *,
    init_kwargs: dict | None = None,
    make_model: Callable[[], tuple[keras.Model, keras.layers.Layer]] | None = None,
    expected_output_shape: Sequence[int | None] | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int = 0,
    list_input: bool = False,
    run_training_check: bool = True,
    run_mixed_precision_check: bool = True,
    run_saving_check: bool = True,
    custom_objects: dict | None = None,
    atol: float = 0.0,
    passes_masks: bool | None = None,
) -> None:
    """Checks a layer end to end; raises `AssertionError` on the first failure."""
    data = _as_list(input_data)
    init_kwargs = init_kwargs or {}

    def fresh_model():
        if make_model is not None:
            return make_model()
        layer = layer_cls(**init_kwargs)
        inputs = _inputs_for(data)
        arg = inputs if list_input else _call_arg(inputs)
        return keras.Model(inputs, layer(arg)), layer

    # Config round trip: from_config(get_config()) reproduces the config.
    model, layer = fresh_model()
    config = layer.get_config()
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config, (
        f"config round trip changed the config:\n{config}\n!=\n{revived.get_config()}"
    )
    assert isinstance(layer, layer_cls)

    # JSON round trip: the config survives text, as in a `.keras` file.
    text = json.dumps(keras.saving.serialize_keras_object(layer))
    from_json = keras.saving.deserialize_keras_object(
        json.loads(text), custom_objects=custom_objects, safe_mode=True
    )
    assert type(from_json) is type(layer)
    as_json = json.loads(json.dumps(config))  # tuples read back as lists
    assert json.loads(json.dumps(from_json.get_config())) == as_json, (
        "JSON round trip changed the config"
    )

    # Masking: a layer that passes masks returns the mask it was given.
    if passes_masks is not None:
        assert layer.supports_masking == passes_masks
        if not list_input and len(data) == 1 and data[0].ndim >= 3:
            rng = np.random.default_rng(0)
            mask = rng.random(data[0].shape[:-1]) > 0.5
            returned = layer.compute_mask(data[0], mask)
            if passes_masks:
                np.testing.assert_array_equal(_to_numpy(returned), mask)
            else:
                assert returned is None

    # Symbolic call (the model above) and eager call agree on shapes.
    symbolic_shape = tuple(model.outputs[0].shape)
    eager = model(_call_arg(data) if not list_input else data)
    eager = _to_numpy(eager)
    assert eager.shape[1:] == symbolic_shape[1:], (eager.shape, symbolic_shape)
    if expected_output_shape is not None:
        assert eager.shape == tuple(expected_output_shape), (
            f"expected output shape {tuple(expected_output_shape)}, got {eager.shape}"
        )
    assert np.all(np.isfinite(eager)), "eager output is not finite"

    # Weight counts.
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, (
            f"expected {expected_num_trainable_weights} trainable weights, "
            f"got {[w.path for w in layer.trainable_weights]}"
        )
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, (
        f"expected {expected_num_non_trainable_weights} non-trainable weights, "
        f"got {[w.path for w in layer.non_trainable_weights]}"
    )

    model_inputs = data if len(data) > 1 else data[0]

    # One fit step moves every trainable weight of the layer.
    if run_training_check and layer.trainable_weights:
        before = [np.array(_to_numpy(w)) for w in layer.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        target = np.random.default_rng(0).normal(size=eager.shape).astype("float32")
        model.fit(model_inputs, target, batch_size=len(target), epochs=1, verbose=0)
        after = [_to_numpy(w) for w in layer.trainable_weights]
        moved = zip(layer.trainable_weights, before, after, strict=True)
        for weight, old, new in moved:
            assert not np.allclose(old, new), f"{weight.path} did not move in fit"

    # Mixed precision: variables stay float32, the output is float16.
    if run_mixed_precision_check:
        keras.config.set_dtype_policy("mixed_float16")
        try:
            mp_model, mp_layer = fresh_model()
            output = mp_model(model_inputs)
            assert keras.backend.standardize_dtype(output.dtype) == "float16", (
                f"mixed precision output dtype is {output.dtype}"
            )
            for weight in mp_layer.weights:
                assert weight.dtype == "float32", f"{weight.path} is {weight.dtype}"
            assert np.all(np.isfinite(_to_numpy(output)))
        finally:
            keras.config.set_dtype_policy("float32")

    # .keras save and load in safe mode reproduce the outputs exactly.
    if run_saving_check:
        reference = _to_numpy(model.predict(model_inputs, verbose=0))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            loaded = keras.saving.load_model(
                path, safe_mode=True, custom_objects=custom_objects
            )
        restored = _to_numpy(loaded.predict(model_inputs, verbose=0))
        np.testing.assert_allclose(restored, reference, rtol=0, atol=atol)
        assert len(loaded.weights) == len(model.weights)
