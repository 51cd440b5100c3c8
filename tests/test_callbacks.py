import csv

import keras
import numpy as np
import pytest

from keras_tether.callbacks import MixtureWeightsHistory
from keras_tether.layers import WeightedAverage


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


class _LogitsCopier(keras.callbacks.Callback):
    """Reads the logits straight from the layers, without `mixture_weights`."""

    def __init__(self, layers):
        super().__init__()
        self.watched = layers
        self.initial = {}
        self.after_epoch = {layer.name: [] for layer in layers}

    def on_train_begin(self, logs=None):
        for layer in self.watched:
            self.initial[layer.name] = _softmax(
                keras.ops.convert_to_numpy(layer.logits).astype("float64")
            )

    def on_epoch_end(self, epoch, logs=None):
        for layer in self.watched:
            self.after_epoch[layer.name].append(
                _softmax(keras.ops.convert_to_numpy(layer.logits).astype("float64"))
            )


def _mixing_model(feature_axis=None, initial_weights=None):
    """Three branches mixed, and a per-feature mixture of two branches after it."""
    inputs = keras.Input(shape=(4,))
    branches = [keras.layers.Dense(3, name=f"branch_{i}")(inputs) for i in range(3)]
    first = WeightedAverage(name="first", initial_weights=initial_weights)(branches)
    second = WeightedAverage(name="second", feature_axis=feature_axis)(
        [first, keras.layers.Dense(3, name="shortcut")(inputs)]
    )
    model = keras.Model(inputs, second)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x[:, :3] * 2.0).astype("float32")
    return x, y


def _fit(model, callbacks, epochs=3, **kwargs):
    x, y = _data()
    model.fit(
        x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks, **kwargs
    )


def _mixtures(model):
    return [model.get_layer("first"), model.get_layer("second")]


def test_records_the_weights_after_every_epoch():
    model = _mixing_model(initial_weights=[0.5, 0.3, 0.2])
    recorder = MixtureWeightsHistory()
    copier = _LogitsCopier(_mixtures(model))
    _fit(model, [recorder, copier])

    assert recorder.epochs == [0, 1, 2]
    assert sorted(recorder.history) == ["first", "second"]
    np.testing.assert_allclose(recorder.initial["first"], [0.5, 0.3, 0.2], rtol=1e-5)
    np.testing.assert_allclose(recorder.initial["second"], [0.5, 0.5], rtol=1e-6)
    for name in ("first", "second"):
        np.testing.assert_allclose(recorder.initial[name], copier.initial[name], 1e-6)
        recorded = recorder.history[name]
        assert len(recorded) == 3
        for ours, theirs in zip(recorded, copier.after_epoch[name], strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
        # The weights trained, so a stale or shared record would fail above.
        assert not np.allclose(recorded[0], recorded[-1])
        assert not np.allclose(recorder.initial[name], recorded[0])


def test_records_copies_not_views():
    model = _mixing_model()
    recorder = MixtureWeightsHistory()
    _fit(model, [recorder], epochs=2)
    first, last = recorder.history["first"]
    first[:] = 0.0
    assert np.all(recorder.history["first"][1] == last)
    assert np.isclose(recorder.history["first"][1].sum(), 1.0, atol=1e-5)


def test_finds_layers_in_nested_models():
    inner = _mixing_model()
    inputs = keras.Input(shape=(4,))
    outer = keras.Model(inputs, keras.layers.Dense(3, name="head")(inner(inputs)))
    outer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    recorder = MixtureWeightsHistory()
    copier = _LogitsCopier(_mixtures(inner))
    _fit(outer, [recorder, copier], epochs=2)
    assert sorted(recorder.history) == ["first", "second"]
    for name in ("first", "second"):
        np.testing.assert_allclose(
            recorder.history[name][-1], copier.after_epoch[name][-1], rtol=1e-5
        )


def test_records_only_the_named_layers():
    model = _mixing_model()
    recorder = MixtureWeightsHistory(layers="second")
    _fit(model, [recorder], epochs=1)
    assert list(recorder.history) == ["second"]
    assert list(recorder.initial) == ["second"]


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_csv_holds_the_recorded_weights(tmp_path):
    path = tmp_path / "weights.csv"
    model = _mixing_model(feature_axis=-1)
    recorder = MixtureWeightsHistory(csv_path=path)
    copier = _LogitsCopier(_mixtures(model))
    _fit(model, [recorder, copier], epochs=2)

    rows = _read_csv(path)
    # "second" mixes 2 branches per feature of 3: 6 weights, the widest row.
    assert rows[0] == ["epoch", "layer"] + [f"w_{i}" for i in range(6)]
    body = rows[1:]
    assert [(row[0], row[1]) for row in body] == [
        ("-1", "first"),
        ("-1", "second"),
        ("0", "first"),
        ("0", "second"),
        ("1", "first"),
        ("1", "second"),
    ]
    expected = {("-1", name): copier.initial[name] for name in ("first", "second")} | {
        (str(epoch), name): copier.after_epoch[name][epoch]
        for epoch in (0, 1)
        for name in ("first", "second")
    }
    for row in body:
        weights = expected[(row[0], row[1])]
        cells = row[2:]
        assert len(cells) == 6
        values = [float(cell) for cell in cells[: weights.size]]
        # Row-major flattening: branch 0's features come first.
        np.testing.assert_allclose(values, weights.ravel(), rtol=1e-5, atol=1e-7)
        assert cells[weights.size :] == [""] * (6 - weights.size)
    assert recorder.history["second"][0].shape == (2, 3)


def test_second_fit_appends_and_writes_the_header_once(tmp_path):
    path = tmp_path / "weights.csv"
    model = _mixing_model()
    recorder = MixtureWeightsHistory(csv_path=str(path))
    _fit(model, [recorder], epochs=1)
    initial = {name: value.copy() for name, value in recorder.initial.items()}
    _fit(model, [recorder], epochs=2, initial_epoch=1)

    assert recorder.epochs == [0, 1]
    assert len(recorder.history["first"]) == 2
    for name, value in initial.items():
        np.testing.assert_array_equal(recorder.initial[name], value)
    rows = _read_csv(path)
    assert sum(row[0] == "epoch" for row in rows) == 1
    assert [row[0] for row in rows[1:]] == ["-1", "-1", "0", "0", "1", "1"]


def test_unknown_layer_names_raise():
    model = _mixing_model()
    recorder = MixtureWeightsHistory(layers=["first", "missing"])
    with pytest.raises(ValueError, match=r"`layers`.*'missing'"):
        _fit(model, [recorder], epochs=1)


def test_layers_that_are_not_mixtures_raise():
    model = _mixing_model()
    recorder = MixtureWeightsHistory(layers=["shortcut"])
    with pytest.raises(ValueError, match=r"`layers`.*'shortcut'"):
        _fit(model, [recorder], epochs=1)


@pytest.mark.parametrize(
    "layers, error",
    [
        ([], ValueError),
        ([""], ValueError),
        ([3], TypeError),
        (["first", "first"], ValueError),
        (7, TypeError),
    ],
)
def test_invalid_layers_argument_raises(layers, error):
    with pytest.raises(error, match="`layers`"):
        MixtureWeightsHistory(layers=layers)


def test_invalid_csv_path_raises():
    with pytest.raises(TypeError, match="`csv_path`"):
        MixtureWeightsHistory(csv_path=3)


def test_model_without_mixtures_raises():
    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no `WeightedAverage` or `GatedAverage`"):
        _fit(model, [MixtureWeightsHistory()], epochs=1)


class _MeanGatesCopier(keras.callbacks.Callback):
    """Reads a gated average's `moving_mean_gates` variable by hand."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.after_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch.append(
            keras.ops.convert_to_numpy(self.layer.moving_mean_gates)
        )


def test_records_the_mean_gates_of_a_gated_average_beside_a_weighted_average():
    from keras_tether.layers import GatedAverage

    inputs = keras.Input(shape=(4,))
    branches = [keras.layers.Dense(3, name=f"branch_{i}")(inputs) for i in range(3)]
    gate = GatedAverage(momentum=0.5, name="gate")
    gated = gate([inputs, branches])
    mixed = WeightedAverage(name="mix")([gated, keras.layers.Dense(3)(inputs)])
    model = keras.Model(inputs, mixed)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    recorder = MixtureWeightsHistory()
    copier = _MeanGatesCopier(gate)
    _fit(model, [recorder, copier], epochs=2)

    assert sorted(recorder.history) == ["gate", "mix"]
    np.testing.assert_allclose(recorder.initial["gate"], np.full(3, 1 / 3), rtol=1e-6)
    for recorded, copied in zip(
        recorder.history["gate"], copier.after_epoch, strict=True
    ):
        np.testing.assert_allclose(recorded, copied, rtol=1e-6)
        np.testing.assert_allclose(recorded.sum(), 1.0, rtol=1e-5)
    # Training moved the gates away from uniform: the record is not a constant.
    assert not np.allclose(recorder.history["gate"][-1], 1 / 3, atol=1e-4)
