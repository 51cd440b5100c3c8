"""The mixture regularizers of `WeightedAverage`, against NumPy entropies."""

import doctest
import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_tether.layers import WeightedAverage
from keras_tether.regularizers import EntropyRegularizer
from keras_tether.regularizers import (
    _entropy_regularizer as mixture_regularizers_module,
)


def np_entropy(weights):
    weights = np.asarray(weights, "float64")
    logs = np.log(np.where(weights > 0, weights, 1.0))
    return -(weights * logs).sum(axis=0)


@pytest.mark.parametrize(
    "weights",
    [[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [[0.9, 0.25], [0.1, 0.25], [0.0, 0.5]]],
)
def test_penalties_match_numpy(weights):
    n = len(weights)
    sparse = EntropyRegularizer(0.3)(np.asarray(weights, "float32"))
    uniform = EntropyRegularizer(0.3, toward="uniform")(np.asarray(weights, "float32"))
    expected = np_entropy(weights)
    np.testing.assert_allclose(float(sparse), 0.3 * expected.mean(), atol=1e-6)
    np.testing.assert_allclose(
        float(uniform), 0.3 * (np.log(n) - expected).mean(), atol=1e-6
    )


def test_layer_adds_the_penalty_of_its_weights():
    regularizer = EntropyRegularizer(0.5)
    layer = WeightedAverage(
        initial_weights=[0.6, 0.3, 0.1], mixture_regularizer=regularizer
    )
    layer([np.ones((2, 3), "float32")] * 3)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(layer.losses[0])),
        0.5 * np_entropy([0.6, 0.3, 0.1]),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "toward, initial, simplex_name",
    [
        ("sparse", [0.4, 0.35, 0.25], "softmax"),
        ("sparse", [0.4, 0.35, 0.25], "sparsemax"),
        ("uniform", [0.8, 0.15, 0.05], "softmax"),
    ],
)
def test_fit_moves_weights_toward_the_target(toward, initial, simplex_name):
    # Identical branches make the data loss blind to the weights, so only the
    # regularizer moves them.
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    symbolic = keras.Input(shape=(4,))
    layer = WeightedAverage(
        simplex=simplex_name,
        initial_weights=initial,
        mixture_regularizer=EntropyRegularizer(1.0, toward=toward),
    )
    model = keras.Model(symbolic, layer([symbolic] * 3))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    model.fit(x, x, batch_size=32, epochs=30, verbose=0)
    before, after = np_entropy(initial), np_entropy(layer.mixture_weights)
    if toward == "sparse":
        assert after < 0.5 * before, layer.mixture_weights
        assert np.argmax(layer.mixture_weights) == 0
    else:
        assert after > before + 0.5 * (np.log(3) - before), layer.mixture_weights


def test_regularized_layer_saves_and_loads():
    x = [
        np.random.default_rng(i).normal(size=(4, 2)).astype("float32") for i in range(2)
    ]
    symbolic = [keras.Input(shape=(2,)) for _ in range(2)]
    regularizer = EntropyRegularizer(0.2, toward="uniform")
    layer = WeightedAverage(mixture_regularizer=regularizer, name="mixture")
    model = keras.Model(symbolic, layer(symbolic))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    revived = loaded.get_layer("mixture").mixture_regularizer
    assert isinstance(revived, EntropyRegularizer)
    assert revived.get_config() == {"strength": 0.2, "toward": "uniform"}
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"strength": -1.0}, ValueError, r"`strength`.*non-negative.*strength=-1.0"),
        ({"strength": "big"}, TypeError, r"`strength`.*strength='big'"),
        ({"toward": "dense"}, ValueError, r"`toward`.*'sparse'.*toward='dense'"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EntropyRegularizer(**kwargs)


def test_docstring_examples_run():
    results = doctest.testmod(
        mixture_regularizers_module,
        extraglobs={"np": np},
        optionflags=doctest.NORMALIZE_WHITESPACE,
    )
    assert results.attempted >= 2
    assert results.failed == 0
