"""`WeightedAverage(branch_axis=...)` on one stacked tensor, and integer inputs."""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether.layers import ParallelDense, WeightedAverage
from keras_tether.regularizers import EntropyRegularizer


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _softmax(logits, axis=0):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("branch_axis", [1, 2, -1])
def test_stacked_input_is_mixed_along_the_branch_axis(branch_axis):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 3)).astype("float32")
    x[:, :, 0] += 5.0  # the axes differ
    weights = [0.2, 0.5, 0.3]
    layer = WeightedAverage(initial_weights=weights, branch_axis=branch_axis)
    y = _np(layer(x))
    moved = np.moveaxis(x, branch_axis, 0)
    expected = sum(w * moved[n] for n, w in enumerate(weights))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, 3, 3, 3)) == (None,) + expected.shape[1:]


def test_stacked_and_list_forms_agree_with_every_option():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 5)).astype("float32")
    options = {
        "initial_weights": [0.6, 0.1, 0.3],
        "scale": True,
        "normalize_inputs": True,
        "mixture_regularizer": EntropyRegularizer(0.1),
    }
    stacked = WeightedAverage(branch_axis=1, **options)
    listed = WeightedAverage(**options)
    y_stacked = _np(stacked(x))
    y_list = _np(listed([x[:, n] for n in range(3)]))
    # Independent formula: per-example, per-branch standardization.
    mean = x.mean(axis=2, keepdims=True)
    std = np.sqrt(x.var(axis=2, keepdims=True) + 1e-6)
    expected = np.einsum("bnf,n->bf", (x - mean) / std, np.array([0.6, 0.1, 0.3]))
    np.testing.assert_allclose(y_stacked, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_list, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(stacked.losses[0]), _np(listed.losses[0]), rtol=1e-6)
    np.testing.assert_allclose(stacked.mixture_weights, [0.6, 0.1, 0.3], atol=1e-6)


@pytest.mark.parametrize(
    ("branch_axis", "feature_axis"), [(1, -1), (1, 2), (2, 1), (-1, 1)]
)
def test_per_feature_mixtures_on_a_stacked_input(branch_axis, feature_axis):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    layer = WeightedAverage(branch_axis=branch_axis, feature_axis=feature_axis)
    layer.build(x.shape)
    logits = rng.normal(size=tuple(layer.logits.shape)).astype("float32")
    layer.logits.assign(logits)
    weights = _softmax(logits)  # (branches, features)
    b = branch_axis % 3
    f = feature_axis % 3
    # Bring the input to (batch, branch, feature) and mix by hand.
    ordered = np.transpose(x, (0, b, f))
    expected = np.einsum("bnf,nf->bf", ordered, weights)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_branch_dropout_on_a_stacked_input_keeps_a_mixture():
    x = np.broadcast_to(np.arange(4, dtype="float32")[None, :, None], (2, 4, 3))
    layer = WeightedAverage(branch_axis=1, branch_dropout=0.5, seed=3)
    seen = set()
    for _ in range(8):
        y = _np(layer(x, training=True))
        # Every output is a convex mix of the branch values 0..3: the mean of
        # the kept branches.
        assert np.all(y >= 0) and np.all(y <= 3)
        seen.add(round(float(y[0, 0]), 4))
    assert len(seen) > 1
    np.testing.assert_allclose(_np(layer(x)), np.full((2, 3), 1.5), rtol=1e-6)


def test_output_mask_is_any_branch_mask():
    layer = WeightedAverage(branch_axis=1)
    mask = np.array([[[True, False], [False, False]], [[False, False], [False, True]]])
    x = np.zeros((2, 2, 2, 3), dtype="float32")
    out = layer.compute_mask(x, keras.ops.convert_to_tensor(mask))
    np.testing.assert_array_equal(_np(out), mask.any(axis=1))
    assert layer.compute_mask(x, None) is None


def test_stacked_conformance():
    run_layer_test(
        WeightedAverage,
        np.random.default_rng(4).normal(size=(4, 3, 5)).astype("float32"),
        init_kwargs={"branch_axis": 1, "feature_axis": -1, "scale": True},
        expected_output_shape=(4, 5),
        expected_num_trainable_weights=2,
    )


def test_a_parallel_dense_ensemble_mixed_in_one_tensor_trains_and_reloads(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            ParallelDense(8, 4, activation="relu"),
            ParallelDense(2, 4, per_branch_inputs=True),
            WeightedAverage(branch_axis=1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.allclose(model.layers[-1].mixture_weights, 0.25)
    path = str(tmp_path / "ensemble.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))


INVALID = [
    ({"branch_axis": 0}, ValueError, r"`branch_axis`.*branch_axis=0"),
    ({"branch_axis": 1.0}, TypeError, r"`branch_axis`.*1.0"),
    ({"branch_axis": True}, TypeError, r"`branch_axis`"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), INVALID)
def test_bad_branch_axis_values_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        WeightedAverage(**kwargs)


def test_stacked_inputs_that_do_not_fit_are_refused():
    with pytest.raises(TypeError, match="pass `branch_axis`"):
        WeightedAverage()(keras.Input((3, 4)))
    with pytest.raises(TypeError, match="one tensor.*list of 2"):
        WeightedAverage(branch_axis=1)([keras.Input((3,)), keras.Input((3,))])
    with pytest.raises(ValueError, match=r"`branch_axis`.*\[-2, 2\]"):
        WeightedAverage(branch_axis=3)(keras.Input((3, 4)))
    with pytest.raises(ValueError, match="at least 2 branches"):
        WeightedAverage(branch_axis=1)(keras.Input((None, 4)))
    with pytest.raises(ValueError, match="branch axis 1"):
        WeightedAverage(branch_axis=1, feature_axis=1)(keras.Input((3, 4)))
    layer = WeightedAverage(branch_axis=1)
    layer(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"built for 3 branches.*\(2, 5, 4\)"):
        layer(np.zeros((2, 5, 4), "float32"))
    with pytest.raises(ValueError, match="built for 3 branches"):
        layer(keras.Input((5, 4)))


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_and_boolean_inputs_are_averaged_as_floats(dtype):
    a = np.array([[1, 0, 3]]).astype(dtype)
    b = np.array([[3, 1, 0]]).astype(dtype)
    expected = 0.25 * a.astype("float32") + 0.75 * b.astype("float32")
    listed = WeightedAverage(initial_weights=[0.25, 0.75])([a, b])
    assert keras.backend.standardize_dtype(listed.dtype) == "float32"
    np.testing.assert_allclose(_np(listed), expected, rtol=1e-6)
    stacked = WeightedAverage(initial_weights=[0.25, 0.75], branch_axis=1)(
        np.stack([a, b], axis=1)
    )
    np.testing.assert_allclose(_np(stacked), expected, rtol=1e-6)
    normalized = WeightedAverage(normalize_inputs=True)([a, b])
    assert np.all(np.isfinite(_np(normalized)))


def test_integer_inputs_in_a_compiled_model():
    inputs = [keras.Input((3,), dtype="int32") for _ in range(2)]
    model = keras.Model(inputs, WeightedAverage(initial_weights=[0.5, 0.5])(inputs))
    a = np.array([[1, 2, 3]], dtype="int32")
    np.testing.assert_allclose(
        model.predict([a, 3 * a], verbose=0), [[2.0, 4.0, 6.0]], rtol=1e-6
    )


def test_the_seed_example_trains_its_stacked_form():
    path = pathlib.Path(__file__).parents[1] / "examples" / "seed_mixing.py"
    spec = importlib.util.spec_from_file_location("seed_mixing_stacked", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, before, after = example.main(
        epochs=2, samples=64, num_branches=5, stacked=True
    )
    assert isinstance(model.get_layer("mlps"), ParallelDense)
    assert model.input_shape == (None, 5, example.INPUT_DIM)
    np.testing.assert_allclose(before, np.full(5, 0.2), rtol=1e-6)
    assert abs(float(after.sum()) - 1.0) < 1e-5
    assert not np.allclose(before, after)
    separate = example.build_model(5)
    assert separate.count_params() == model.count_params()
