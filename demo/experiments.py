"""keras-tether's demo (`make demo`): mixtures, ties, stacked branches, ensembles.

Four small experiments on scikit-learn's 8x8 digits, which ship with the
package, so the demo runs offline:

- Mixing: three branches see the left half of each image, the right half, and
  fresh Gaussian noise. A `WeightedAverage` mixes their class probabilities
  and learns to trust the halves, not the noise. It is compared with each
  branch alone and with a plain `keras.layers.Average` of the same branches.
- Tying: a dense autoencoder whose decoder is tied to its encoder (each
  `ReversibleDense` layer called forward, then in reverse), against the same
  autoencoder untied: half the kernel parameters, and the test reconstruction
  error of each.
- Stacking: an ensemble of 16 two-layer MLPs mixed by a `WeightedAverage`,
  built as 16 separate `Dense` stacks and as two `ParallelDense` layers that
  start from the same weights (`ParallelDense.from_layers`). Both train on
  the same batches in the same order; the demo reports the test accuracy of
  each, which agree up to float rounding, the time to the first training
  step (tracing and compiling) and the time per epoch.
- Deep ensemble: 8 small CNNs (with batch normalization and dropout) trained
  as one `Ensemble` layer, each member on its own cross-entropy. The demo
  reports the test accuracy, negative log-likelihood and expected
  calibration error of the ensemble (the mean of the members' probabilities)
  against a single member, and the training time against the same 8 CNNs
  trained as 8 separate models, one after another.

`run` writes `report.md`, `results.json` and PNG plots to the output folder.
It needs matplotlib and scikit-learn (the `demo` extra), imported only when it
runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import ops

from demo.progress import Counter
from keras_tether.callbacks import MixtureWeightsHistory
from keras_tether.layers import Ensemble, ParallelDense, WeightedAverage
from keras_tether.ties import tied_autoencoder

SEED = 1337
IMAGE_SIZE = 8
DEFAULT_MIXING_EPOCHS = 40
DEFAULT_AUTOENCODER_EPOCHS = 60
BATCH_SIZE = 64
BRANCHES = ("left", "right", "noise")
CLASSIFIERS = (*BRANCHES, "average", "weighted")
AUTOENCODER_UNITS = (32, 8)
LEARNING_RATE = 0.01
DEFAULT_ENSEMBLE_EPOCHS = 20
ENSEMBLE_BRANCHES = 16
ENSEMBLE_UNITS = 32
ENSEMBLE_FORMS = ("separate", "stacked")
DEFAULT_DEEP_ENSEMBLE_EPOCHS = 20
DEEP_ENSEMBLE_MEMBERS = 8
CNN_FILTERS = 16
CALIBRATION_BINS = 10
# The rows of the deep-ensemble table, in order.
DEEP_ENSEMBLE_PREDICTORS = ("ensemble", "member_0", "member_mean", "separate")
DEEP_ENSEMBLE_FORMS = ("ensemble", "separate")
_DEEP_ENSEMBLE_LABELS = {
    "ensemble": f"ensemble: mean of the {DEEP_ENSEMBLE_MEMBERS} members' probabilities",
    "member_0": "member 0 alone",
    "member_mean": f"one member alone, mean over the {DEEP_ENSEMBLE_MEMBERS}",
    "separate": f"{DEEP_ENSEMBLE_MEMBERS} separate models: mean of their probabilities",
}


class _FreshNoise(keras.layers.Layer):
    """Ignores its input's values and returns fresh Gaussian noise of its shape.

    The noise is drawn anew at every call, in training and inference alike, so
    a branch fed by it cannot memorize the training set: it holds no
    information about the labels at all.
    """

    def __init__(self, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        return keras.random.normal(
            ops.shape(inputs), seed=self.seed_generator, dtype=self.compute_dtype
        )

    def compute_output_shape(self, input_shape):
        return input_shape


class _EpochCounter(keras.callbacks.Callback):
    """Counts the epochs of a quiet `fit` on a terminal's stderr."""

    def __init__(self, counter: Counter):
        super().__init__()
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        self.counter.update(epoch + 1)


class _Stopwatch(keras.callbacks.Callback):
    """Times a `fit`: from `started` to the end of its first step, and its epochs.

    The first step of a fresh model includes tracing and compiling its
    training function, so its time is the wait before training really runs.
    """

    def __init__(self, started: float):
        super().__init__()
        self.started = started
        self.first_step: float | None = None
        self.epochs: list[float] = []
        self._epoch_started = started

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch counts from `started`, the setup of `fit` included.
        if epoch > 0:
            self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.started

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self._epoch_started)


@dataclass
class _Results:
    """Every number the demo reports, and the record needed for its plots."""

    mixing_epochs: int
    autoencoder_epochs: int
    accuracy: dict[str, float] = field(default_factory=dict)
    mixture_weights: dict[str, float] = field(default_factory=dict)
    weights_over_epochs: list[list[float]] = field(default_factory=list)
    parameters: dict[str, int] = field(default_factory=dict)
    reconstruction_mse: dict[str, float] = field(default_factory=dict)
    ensemble_epochs: int = DEFAULT_ENSEMBLE_EPOCHS
    ensemble_images: int = 0
    ensemble_accuracy: dict[str, float] = field(default_factory=dict)
    ensemble_agreement: float = 0.0
    ensemble_max_logit_difference: float = 0.0
    ensemble_parameters: dict[str, int] = field(default_factory=dict)
    first_step_seconds: dict[str, float] = field(default_factory=dict)
    first_epoch_seconds: dict[str, float] = field(default_factory=dict)
    epoch_seconds: dict[str, float | None] = field(default_factory=dict)
    deep_ensemble_epochs: int = DEFAULT_DEEP_ENSEMBLE_EPOCHS
    # By predictor (`DEEP_ENSEMBLE_PREDICTORS`): accuracy, nll and ece.
    deep_ensemble_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    deep_ensemble_members: list[dict[str, float]] = field(default_factory=list)
    deep_ensemble_parameters: int = 0
    deep_ensemble_training_seconds: dict[str, float] = field(default_factory=dict)
    deep_ensemble_epoch_seconds: dict[str, float | None] = field(default_factory=dict)
    deep_ensemble_to_models_difference: float = 0.0
    seconds: float = 0.0


def run(out_dir: str, epochs: int | None = None) -> int:
    """Runs the four experiments, prints their tables and writes the report.

    Args:
        out_dir: String, the folder for `report.md`, `results.json` and the
            PNG plots; created if missing.
        epochs: Optional positive integer, the training epochs of every model.
            Defaults to `None`: 40 for the classifiers, 60 for the
            autoencoders, 20 for the stacked ensembles and 20 for the deep
            ensembles.

    Returns:
        The process exit code: 0 on success, 1 if an optional dependency is
        missing, 2 if `epochs` is invalid.
    """
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0
    ):
        print(
            "Received an invalid value for `epochs`, expected a positive integer. "
            f"Received: epochs={epochs!r}",
            file=sys.stderr,
        )
        return 2
    try:  # the `demo` extra, which the library itself does not need
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as error:
        print(
            f"The demo needs matplotlib and scikit-learn, but {error.name} is not "
            "installed. Install them with: pip install 'keras-tether[demo]'",
            file=sys.stderr,
        )
        return 1

    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    results = _Results(
        mixing_epochs=epochs or DEFAULT_MIXING_EPOCHS,
        autoencoder_epochs=epochs or DEFAULT_AUTOENCODER_EPOCHS,
        ensemble_epochs=epochs or DEFAULT_ENSEMBLE_EPOCHS,
        deep_ensemble_epochs=epochs or DEFAULT_DEEP_ENSEMBLE_EPOCHS,
    )
    print(f"keras-tether demo on the {keras.backend.backend()} backend", flush=True)
    x_train, x_test, y_train, y_test = _load_digits()
    print(
        f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8",
        flush=True,
    )
    with _quiet_tensorflow_retracing_warnings(), _one_torch_thread():
        _mixing(results, x_train, y_train, x_test, y_test)
        reconstructions = _tying(results, x_train, x_test)
        _stacking(results, x_train, y_train, x_test, y_test)
        _deep_ensemble(results, x_train, y_train, x_test, y_test)
    results.seconds = time.perf_counter() - started
    _plot_mixture_weights(results, os.path.join(out_dir, "mixture_weights.png"))
    _plot_reconstructions(
        x_test, reconstructions, os.path.join(out_dir, "reconstructions.png")
    )
    _plot_ensemble_times(results, os.path.join(out_dir, "ensemble_times.png"))
    with open(os.path.join(out_dir, "report.md"), "w") as handle:
        handle.write(_report(results))
    with open(os.path.join(out_dir, "results.json"), "w") as handle:
        json.dump(_as_json(results), handle, indent=2)
    print()
    print(_mixing_table(results))
    print()
    print(_tying_table(results))
    print()
    print(_stacking_table(results))
    print()
    print(_deep_ensemble_table(results))
    print()
    print(_deep_ensemble_times_table(results))
    print(f"\nreport, results and plots written to {out_dir}", flush=True)
    return 0


@contextlib.contextmanager
def _quiet_tensorflow_retracing_warnings():
    # Each model of the demo traces its own `tf.function`s, which TensorFlow
    # mistakes for accidental retracing and warns about between the lines.
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _one_torch_thread():
    # The demo's models are tiny: with two CPU threads, torch spends far more
    # time synchronizing them than computing (the demo ran eight times slower
    # on a two-core machine). Keras has already imported torch when it is the
    # backend, so nothing is imported here; the count is restored afterwards.
    torch = sys.modules.get("torch") if keras.backend.backend() == "torch" else None
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _load_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    labels = digits.target.astype("int32")
    return train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=SEED
    )


def _halves(images: np.ndarray) -> dict[str, np.ndarray]:
    count = len(images)
    return {
        "left": images[:, :, :4].reshape(count, 32),
        "right": images[:, :, 4:].reshape(count, 32),
    }


def _branch(name: str) -> keras.Sequential:
    return keras.Sequential(
        [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)],
        name=name,
    )


def _classifiers() -> keras.Model:
    """The five classifiers of the mixing experiment, side by side in one model.

    Each classifier has its own output, loss and branches (the three mixtures
    start from the same branch weights), and no weight is shared between
    them, so one `fit` trains each exactly as if it trained alone: every Adam
    update reads only its own weight's gradient. It saves compiling five
    models.
    """
    inputs = {
        "left": keras.Input(shape=(IMAGE_SIZE * IMAGE_SIZE // 2,), name="left"),
        "right": keras.Input(shape=(IMAGE_SIZE * IMAGE_SIZE // 2,), name="right"),
    }
    seen = {**inputs, "noise": _FreshNoise(SEED, name="fresh_noise")(inputs["left"])}

    def branches(group: str) -> list:
        keras.utils.set_random_seed(SEED)
        return [_branch(f"{group}_{name}")(seen[name]) for name in BRANCHES]

    outputs = dict(zip(BRANCHES, branches("alone"), strict=True))
    outputs["average"] = keras.layers.Average(name="average")(branches("average"))
    outputs["weighted"] = WeightedAverage(name="mixture")(branches("weighted"))
    model = keras.Model(inputs, outputs, name="classifiers")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss={
            name: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            for name in outputs
        },
    )
    return model


def _mixing(results: _Results, x_train, y_train, x_test, y_test) -> None:
    epochs = results.mixing_epochs
    print(
        "\nmixing: classifiers of the left half, the right half, noise, and "
        f"their mixtures ({_epochs(epochs)})",
        flush=True,
    )
    model = _classifiers()
    recorder = MixtureWeightsHistory(layers="mixture")
    labels = ("left half alone", "right half alone", "noise alone")
    labels += ("Average of the three", "WeightedAverage of the three")
    logits = _train(
        "the five classifiers",
        model,
        _halves(x_train),
        {name: y_train for name in CLASSIFIERS},
        _halves(x_test),
        epochs,
        recorder,
    )
    for name, label in zip(CLASSIFIERS, labels, strict=True):
        accuracy = float(np.mean(np.argmax(logits[name], axis=-1) == y_test))
        results.accuracy[name] = accuracy
        print(f"    {label}: test accuracy {accuracy:.3f}", flush=True)
    final = model.get_layer("mixture").mixture_weights
    results.mixture_weights = dict(zip(BRANCHES, map(float, final), strict=True))
    record = [recorder.initial["mixture"], *recorder.history["mixture"]]
    results.weights_over_epochs = [[float(w) for w in weights] for weights in record]
    print(
        "    learned weights: "
        + ", ".join(f"{name} {w:.3f}" for name, w in results.mixture_weights.items()),
        flush=True,
    )


def _untied_autoencoder(input_dim: int, units) -> keras.Sequential:
    layers: list = [keras.Input(shape=(input_dim,))]
    for index, size in enumerate(units):
        layers.append(
            keras.layers.Dense(size, activation="relu", name=f"encoder_{index}")
        )
    sizes = [input_dim, *units[:-1]]
    for index in reversed(range(len(units))):
        activation = "sigmoid" if index == 0 else "relu"
        layers.append(
            keras.layers.Dense(
                sizes[index], activation=activation, name=f"decoder_{index}"
            )
        )
    return keras.Sequential(layers, name="untied_autoencoder")


def _autoencoders() -> tuple[keras.Model, dict[str, keras.Model]]:
    """The tied and the untied autoencoder, side by side in one model."""
    pixels = IMAGE_SIZE * IMAGE_SIZE
    units = list(AUTOENCODER_UNITS)
    keras.utils.set_random_seed(SEED)
    tied = tied_autoencoder(pixels, units, output_activation="sigmoid")
    keras.utils.set_random_seed(SEED)
    untied = _untied_autoencoder(pixels, units)
    inputs = keras.Input(shape=(pixels,), name="pixels")
    model = keras.Model(
        inputs, {"tied": tied(inputs), "untied": untied(inputs)}, name="autoencoders"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss={"tied": "mse", "untied": "mse"},
    )
    return model, {"tied": tied, "untied": untied}


def _tying(results: _Results, x_train, x_test) -> dict[str, np.ndarray]:
    epochs = results.autoencoder_epochs
    print(f"\ntying: autoencoders {_layer_sizes()} ({_epochs(epochs)})", flush=True)
    model, parts = _autoencoders()
    flat_train = x_train.reshape(len(x_train), -1)
    flat_test = x_test.reshape(len(x_test), -1)
    outputs = _train(
        "the tied and the untied autoencoder",
        model,
        flat_train,
        {name: flat_train for name in parts},
        flat_test,
        epochs,
    )
    reconstructions = {}
    for name, part in parts.items():
        results.parameters[name] = int(part.count_params())
        mse = float(np.mean((outputs[name] - flat_test) ** 2))
        results.reconstruction_mse[name] = mse
        reconstructions[name] = outputs[name].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        print(
            f"    {name}: {results.parameters[name]} parameters, test MSE {mse:.4f}",
            flush=True,
        )
    return reconstructions


def _ensembles() -> dict[str, keras.Model]:
    """The ensemble of the stacking experiment, built as separate and stacked.

    Both models compute the same function from the same weights: the
    stacked one is made of the separate one's `Dense` layers, copied into
    two `ParallelDense` layers, and both mixtures start at 1/16 each.
    """
    pixels = IMAGE_SIZE * IMAGE_SIZE
    keras.utils.set_random_seed(SEED)
    hidden = [
        keras.layers.Dense(ENSEMBLE_UNITS, activation="relu", name=f"hidden_{index}")
        for index in range(ENSEMBLE_BRANCHES)
    ]
    logits = [
        keras.layers.Dense(10, name=f"logits_{index}")
        for index in range(ENSEMBLE_BRANCHES)
    ]
    inputs = keras.Input(shape=(pixels,), name="pixels")
    branches = [last(first(inputs)) for first, last in zip(hidden, logits, strict=True)]
    separate = keras.Model(
        inputs, WeightedAverage(name="mixture")(branches), name="separate_branches"
    )
    inputs = keras.Input(shape=(pixels,), name="pixels")
    stacked_hidden = ParallelDense.from_layers(hidden, name="hidden")(inputs)
    stacked_logits = ParallelDense.from_layers(
        logits, per_branch_inputs=True, name="logits"
    )(stacked_hidden)
    stacked = keras.Model(
        inputs,
        WeightedAverage(branch_axis=1, name="mixture")(stacked_logits),
        name="stacked_branches",
    )
    models = {"separate": separate, "stacked": stacked}
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return models


def _stacking(results: _Results, x_train, y_train, x_test, y_test) -> None:
    epochs = results.ensemble_epochs
    print(
        f"\nstacking: an ensemble of {ENSEMBLE_BRANCHES} MLPs "
        f"{_ensemble_sizes()}, separate and stacked ({_epochs(epochs)})",
        flush=True,
    )
    models = _ensembles()
    # Whole batches only: a smaller last batch has a shape of its own, which
    # the backends that compile per shape would compile a second time.
    count = len(x_train) // BATCH_SIZE * BATCH_SIZE
    x_train, y_train = x_train[:count], y_train[:count]
    results.ensemble_images = count
    flat_train = x_train.reshape(count, -1)
    flat_test = x_test.reshape(len(x_test), -1)
    labels = {
        "separate": f"{ENSEMBLE_BRANCHES} separate Dense stacks",
        "stacked": "ParallelDense x2",
    }
    logits = {}
    for name, model in models.items():
        # No shuffling: the training images are already in a random order
        # (train_test_split shuffles them), and both forms must see the
        # same batches in the same order for their results to be compared.
        print(f"  training {labels[name]} ...", end="", flush=True)
        counter = Counter("epochs", epochs)
        started = time.perf_counter()
        stopwatch = _Stopwatch(started)
        try:
            model.fit(
                flat_train,
                y_train,
                epochs=epochs,
                batch_size=BATCH_SIZE,
                shuffle=False,
                verbose=0,
                callbacks=[stopwatch, _EpochCounter(counter)],
            )
        finally:
            counter.close()
        print(f" done in {time.perf_counter() - started:.1f} s", flush=True)
        logits[name] = model.predict(flat_test, batch_size=512, verbose=0)
        accuracy = float(np.mean(np.argmax(logits[name], axis=-1) == y_test))
        results.ensemble_accuracy[name] = accuracy
        results.ensemble_parameters[name] = int(model.count_params())
        results.first_step_seconds[name] = float(stopwatch.first_step)
        results.first_epoch_seconds[name] = float(stopwatch.epochs[0])
        # The first epoch holds the compilation; a steady epoch is one after.
        steady = stopwatch.epochs[1:]
        results.epoch_seconds[name] = float(np.median(steady)) if steady else None
        print(f"    test accuracy {accuracy:.3f}", flush=True)
    predictions = [np.argmax(logits[name], axis=-1) for name in ENSEMBLE_FORMS]
    results.ensemble_agreement = float(np.mean(predictions[0] == predictions[1]))
    results.ensemble_max_logit_difference = float(
        np.max(np.abs(logits["separate"] - logits["stacked"]))
    )
    print(
        f"    the two agree on {results.ensemble_agreement:.1%} of the test "
        "images; largest logit difference "
        f"{results.ensemble_max_logit_difference:.2g}",
        flush=True,
    )


def _cnn() -> keras.Model:
    """One member of the deep ensemble: a small CNN that gives 10 logits."""
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="image")
    x = keras.layers.Conv2D(CNN_FILTERS, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.25)(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="cnn")


def _cnn_sizes() -> str:
    return (
        f"Conv2D({CNN_FILTERS}, 3, relu) -> BatchNormalization -> MaxPooling2D "
        "-> Flatten -> Dropout(0.25) -> Dense(10)"
    )


def _log_probabilities(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in float64."""
    logits = np.asarray(logits, dtype="float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """The expected calibration error of class probabilities, in [0, 1].

    Each prediction's confidence (its largest probability) falls in one of
    `bins` equal-width intervals (0, 1/bins], ..., ((bins-1)/bins, 1]. In
    each interval, the gap between the accuracy and the mean confidence of
    its predictions is weighted by the share of predictions it holds; the
    error is the sum of these.
    """
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right=True: a confidence on an edge belongs to the interval it closes.
    index = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    error = 0.0
    for interval in range(bins):
        inside = index == interval
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            error += inside.mean() * gap
    return float(error)


def _scores(log_probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Test accuracy, negative log-likelihood and calibration error."""
    probabilities = np.exp(log_probabilities)
    likelihood = log_probabilities[np.arange(len(labels)), labels]
    return {
        "accuracy": float(np.mean(probabilities.argmax(axis=-1) == labels)),
        "nll": float(-np.mean(likelihood)),
        "ece": _expected_calibration_error(probabilities, labels),
    }


def _mean_probabilities(member_log_probabilities: np.ndarray) -> np.ndarray:
    """The log of the members' mean probabilities; the member axis is 1."""
    members = member_log_probabilities.shape[1]
    peak = member_log_probabilities.max(axis=1, keepdims=True)
    total = np.exp(member_log_probabilities - peak).sum(axis=1, keepdims=True)
    return (peak + np.log(total / members))[:, 0]


def _deep_ensemble(results: _Results, x_train, y_train, x_test, y_test) -> None:
    epochs = results.deep_ensemble_epochs
    members = DEEP_ENSEMBLE_MEMBERS
    print(
        f"\ndeep ensemble: {members} CNNs ({_cnn_sizes()}) as one Ensemble and "
        f"as {members} separate models ({_epochs(epochs)})",
        flush=True,
    )
    # Whole batches, in the order train_test_split left them, as in the
    # stacking experiment: both forms see the same batches in the same order.
    count = len(x_train) // BATCH_SIZE * BATCH_SIZE
    images_train = x_train[:count, ..., None]
    labels_train = y_train[:count]
    images_test = x_test[..., None]
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="image")
    ensemble = Ensemble(_cnn(), branches=members, seed=SEED, name="members")
    model = keras.Model(inputs, ensemble(inputs), name="deep_ensemble")
    # The separate models start as the ensemble's members do.
    separate = ensemble.to_models()
    results.deep_ensemble_parameters = int(model.count_params())
    # The output is (batch, members, 10): with the labels repeated along the
    # member axis, the loss is the mean over the members of each member's
    # cross-entropy, and each member's gradient reaches only its own weights.
    # Adam's steps do not depend on the scale of a gradient (but for its
    # epsilon), so the factor 1/members slows no member down: each trains as
    # if alone.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    member_labels = np.repeat(labels_train[:, None], members, axis=1)
    label = f"Ensemble(cnn, branches={members})"
    stopwatches = _fit_timed(label, [model], images_train, member_labels, epochs)
    _record_times(results, "ensemble", stopwatches)
    for copy in separate:
        copy.compile(
            optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    label = f"{members} separate CNNs, one after another"
    stopwatches = _fit_timed(label, separate, images_train, labels_train, epochs)
    _record_times(results, "separate", stopwatches)

    logits = model.predict(images_test, batch_size=512, verbose=0)
    # The way back: each member as a model of its own computes what the
    # ensemble computes for it.
    results.deep_ensemble_to_models_difference = max(
        float(np.max(np.abs(copy.predict(images_test, verbose=0) - logits[:, n])))
        for n, copy in enumerate(ensemble.to_models())
    )
    member_log_probabilities = _log_probabilities(logits)
    results.deep_ensemble_members = [
        _scores(member_log_probabilities[:, n], y_test) for n in range(members)
    ]
    separate_logits = np.stack(
        [copy.predict(images_test, batch_size=512, verbose=0) for copy in separate],
        axis=1,
    )
    member_scores = results.deep_ensemble_members
    results.deep_ensemble_scores = {
        "ensemble": _scores(_mean_probabilities(member_log_probabilities), y_test),
        "member_0": member_scores[0],
        "member_mean": {
            key: float(np.mean([scores[key] for scores in member_scores]))
            for key in member_scores[0]
        },
        "separate": _scores(
            _mean_probabilities(_log_probabilities(separate_logits)), y_test
        ),
    }
    for name in ("ensemble", "member_0"):
        scores = results.deep_ensemble_scores[name]
        print(
            f"    {_DEEP_ENSEMBLE_LABELS[name]}: test accuracy "
            f"{scores['accuracy']:.3f}, NLL {scores['nll']:.3f}, "
            f"ECE {scores['ece']:.3f}",
            flush=True,
        )


def _fit_timed(label: str, models, x, y, epochs) -> list[_Stopwatch]:
    """Fits each model in turn on the same batches, with one line of progress."""
    print(f"  training {label} ...", end="", flush=True)
    counter = Counter("epochs", epochs * len(models))
    stopwatches = []
    started = time.perf_counter()
    try:
        for done, model in enumerate(models):
            stopwatch = _Stopwatch(time.perf_counter())
            stopwatches.append(stopwatch)

            def show(epoch, logs=None, done=done):
                counter.update(done * epochs + epoch + 1)

            model.fit(
                x,
                y,
                epochs=epochs,
                batch_size=BATCH_SIZE,
                shuffle=False,
                verbose=0,
                callbacks=[
                    stopwatch,
                    keras.callbacks.LambdaCallback(on_epoch_end=show),
                ],
            )
    finally:
        counter.close()
    print(f" done in {time.perf_counter() - started:.1f} s", flush=True)
    return stopwatches


def _record_times(results: _Results, form: str, stopwatches) -> None:
    # The time of all the models' epochs, and of their epochs after the first
    # (which holds each model's compilation), per epoch.
    results.deep_ensemble_training_seconds[form] = float(
        sum(sum(stopwatch.epochs) for stopwatch in stopwatches)
    )
    steady = [stopwatch.epochs[1:] for stopwatch in stopwatches]
    results.deep_ensemble_epoch_seconds[form] = (
        float(sum(np.median(epochs) for epochs in steady)) if steady[0] else None
    )


def _train(label: str, model, x, y, x_test, epochs, *callbacks):
    """Fits `model` quietly, with one line of progress, and predicts `x_test`."""
    print(f"  training {label} ...", end="", flush=True)
    started = time.perf_counter()
    counter = Counter("epochs", epochs)
    try:
        model.fit(
            x,
            y,
            epochs=epochs,
            batch_size=BATCH_SIZE,
            shuffle=True,
            verbose=0,
            callbacks=[*callbacks, _EpochCounter(counter)],
        )
    finally:
        counter.close()
    print(f" done in {time.perf_counter() - started:.1f} s", flush=True)
    return model.predict(x_test, batch_size=512, verbose=0)


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _layer_sizes() -> str:
    sizes = [IMAGE_SIZE * IMAGE_SIZE, *AUTOENCODER_UNITS]
    return " -> ".join(map(str, sizes + sizes[-2::-1]))


def _ensemble_sizes() -> str:
    return f"{IMAGE_SIZE * IMAGE_SIZE} -> {ENSEMBLE_UNITS} -> 10"


def _mixing_table(results: _Results) -> str:
    accuracy = results.accuracy
    weights = ", ".join(
        f"{name} {results.mixture_weights[name]:.3f}" for name in BRANCHES
    )
    rows = [
        ("left half alone", f"{accuracy['left']:.3f}", ""),
        ("right half alone", f"{accuracy['right']:.3f}", ""),
        ("noise alone", f"{accuracy['noise']:.3f}", ""),
        ("Average of the three", f"{accuracy['average']:.3f}", "1/3 each"),
        ("WeightedAverage of the three", f"{accuracy['weighted']:.3f}", weights),
    ]
    return _markdown_table(("classifier", "test accuracy", "mixture weights"), rows)


def _tying_table(results: _Results) -> str:
    rows = [
        (
            f"{kind}, {_layer_sizes()}",
            str(results.parameters[kind]),
            f"{results.reconstruction_mse[kind]:.4f}",
        )
        for kind in ("tied", "untied")
    ]
    return _markdown_table(("autoencoder", "parameters", "test MSE"), rows)


def _stacking_table(results: _Results) -> str:
    def seconds(value):
        return "-" if value is None else f"{value:.3f}"

    labels = {
        "separate": f"{ENSEMBLE_BRANCHES} Dense stacks + WeightedAverage",
        "stacked": "ParallelDense x2 + WeightedAverage(branch_axis=1)",
    }
    rows = [
        (
            labels[form],
            f"{results.ensemble_accuracy[form]:.3f}",
            f"{results.first_step_seconds[form]:.2f}",
            f"{results.first_epoch_seconds[form]:.2f}",
            seconds(results.epoch_seconds[form]),
        )
        for form in ENSEMBLE_FORMS
    ]
    header = (
        "ensemble",
        "test accuracy",
        "first step (s)",
        "first epoch (s)",
        "later epochs (s)",
    )
    return _markdown_table(header, rows)


def _deep_ensemble_table(results: _Results) -> str:
    rows = [
        (
            _DEEP_ENSEMBLE_LABELS[name],
            f"{scores['accuracy']:.3f}",
            f"{scores['nll']:.3f}",
            f"{scores['ece']:.3f}",
        )
        for name, scores in (
            (name, results.deep_ensemble_scores[name])
            for name in DEEP_ENSEMBLE_PREDICTORS
        )
    ]
    header = ("predictor", "test accuracy", "NLL", "ECE")
    return _markdown_table(header, rows)


def _deep_ensemble_times_table(results: _Results) -> str:
    def seconds(value):
        return "-" if value is None else f"{value:.3f}"

    members = DEEP_ENSEMBLE_MEMBERS
    labels = {
        "ensemble": f"Ensemble(cnn, branches={members}): one model",
        "separate": f"{members} separate models, one after another",
    }
    rows = [
        (
            labels[form],
            f"{results.deep_ensemble_training_seconds[form]:.2f}",
            seconds(results.deep_ensemble_epoch_seconds[form]),
        )
        for form in DEEP_ENSEMBLE_FORMS
    ]
    header = ("training", "all epochs (s)", "an epoch after the first (s)")
    return _markdown_table(header, rows)


def _markdown_table(header, rows) -> str:
    widths = [
        max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))
    ]

    def line(cells):
        padded = (
            str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _report(results: _Results) -> str:
    weights = results.mixture_weights
    saved = results.parameters["untied"] - results.parameters["tied"]
    return f"""# keras-tether demo

Backend: {keras.backend.backend()}, keras {keras.__version__}. Data: scikit-learn's
8x8 handwritten digits, 75% for training and 25% for testing. Seed {SEED}; the
experiments took {results.seconds:.0f} s.

## Mixing: `WeightedAverage` learns which branch to trust

Three small networks (32 ReLU units, then 10 logits) each see one input: the left
half of the image, the right half, or fresh Gaussian noise of the same shape, drawn
anew at every step. `keras_tether.layers.WeightedAverage` mixes their logits with
weights it learns on the simplex (softmax of 3 free parameters);
`keras.layers.Average` mixes them with 1/3 each. Every classifier trained for
{_epochs(results.mixing_epochs)}; each branch alone trained on its own loss.

{_mixing_table(results)}

The learned weights are left {weights["left"]:.3f}, right {weights["right"]:.3f}
and noise {weights["noise"]:.3f}: the mixture learns that the noise branch carries
nothing. With 450 test images, accuracies one or two points apart are within
noise of each other.

![Mixture weights over the epochs](mixture_weights.png)

## Tying: `ReversibleDense` halves the kernels of an autoencoder

`keras_tether.ties.tied_autoencoder(64, {list(AUTOENCODER_UNITS)})` stacks
`ReversibleDense` encoder layers and calls them again with `reverse=True` as the
decoder, on the encoder kernels, transposed. Its untied twin has decoder kernels
of its own. Both trained for {_epochs(results.autoencoder_epochs)} on the mean
squared error of the reconstructed pixels (scaled to [0, 1]); the tie saves
{saved} parameters.

{_tying_table(results)}

![Test digits (top) and their tied and untied reconstructions](reconstructions.png)

## Stacking: `ParallelDense` computes {ENSEMBLE_BRANCHES} branches as one layer

An ensemble of {ENSEMBLE_BRANCHES} two-layer MLPs ({_ensemble_sizes()}, ReLU) whose
logits a `WeightedAverage` mixes, built two ways: {ENSEMBLE_BRANCHES} separate pairs of
`Dense` layers mixed as a list, and two `ParallelDense` layers (the second with
`per_branch_inputs=True`) mixed by `WeightedAverage(branch_axis=1)`. The stacked model
is made with `ParallelDense.from_layers` from the separate model's layers, so both
start from the same weights ({results.ensemble_parameters["stacked"]} parameters
each); both trained for {_epochs(results.ensemble_epochs)} on the same batches in the
same order (no reshuffling), on the first {results.ensemble_images} training images:
whole batches of {BATCH_SIZE}, so that every step has one shape and compiles once.

{_stacking_table(results)}

The two forms compute the same function, so they agree on
{results.ensemble_agreement:.1%} of the test predictions; their test logits differ by at
most {results.ensemble_max_logit_difference:.2g}, float rounding that training
carries along (one matrix product sums in another order than {ENSEMBLE_BRANCHES} small
ones). The first step includes tracing and compiling the training step, and the
first epoch includes the first step; "later epochs" is the median time of the epochs
after the first ("-" after a single epoch). Times come from one run on this machine and
vary between runs.

![Time to the first step and per epoch, separate and stacked](ensemble_times.png)

## Deep ensemble: {DEEP_ENSEMBLE_MEMBERS} CNNs as one `Ensemble` layer

A deep ensemble trains several copies of a network from different random starts,
each on its own, and averages their predicted probabilities. Here each member is a
small CNN, {_cnn_sizes()}
({results.deep_ensemble_parameters // DEEP_ENSEMBLE_MEMBERS} parameters), and
`keras_tether.layers.Ensemble(cnn, branches={DEEP_ENSEMBLE_MEMBERS})` holds the
{DEEP_ENSEMBLE_MEMBERS} of them as one layer: each member has its own weights, its own
batch-normalization statistics and its own dropout masks, and the model's output
holds every member's logits, `(batch, {DEEP_ENSEMBLE_MEMBERS}, 10)`. With the labels
repeated along the member axis, the loss is the mean over the members of each
member's cross-entropy, so every member learns the labels by itself (the averaged
prediction is never trained). All trained for {_epochs(results.deep_ensemble_epochs)}
with Adam on the same batches as the stacking experiment.

{_deep_ensemble_table(results)}

The negative log-likelihood (NLL) is the mean of `-log p(label)` over the test
images; the expected calibration error (ECE) puts each prediction's confidence (its
largest probability) in one of {CALIBRATION_BINS} equal-width bins and sums, weighted
by the bins' shares, the gaps between each bin's accuracy and mean confidence, so
it counts over- and underconfidence alike. The ensemble's NLL is never above the
members' mean NLL: the log of a mean of probabilities is at least the mean of their
logs. Its confidence is at most the members' mean confidence, lower where they
disagree. The last row is the same {DEEP_ENSEMBLE_MEMBERS} CNNs, from the same initial
weights (`ensemble.to_models()` before training), trained as
{DEEP_ENSEMBLE_MEMBERS} separate Keras models; they draw other dropout masks, so
their numbers differ a little. After training, `ensemble.to_models()` gives each
member back as a model of its own; their test logits and the ensemble's members'
differ by at most {results.deep_ensemble_to_models_difference:.2g}.

{_deep_ensemble_times_table(results)}

"All epochs" is the time of every epoch of every model, compilation included;
an epoch after the first is the median of the later epochs ("-" after a single
epoch), summed over the models. Times come from one run on this machine and vary
between runs.
"""


def _as_json(results: _Results) -> dict:
    return {
        "backend": keras.backend.backend(),
        "mixing_epochs": results.mixing_epochs,
        "autoencoder_epochs": results.autoencoder_epochs,
        "test_accuracy": results.accuracy,
        "mixture_weights": results.mixture_weights,
        "mixture_weights_over_epochs": results.weights_over_epochs,
        "parameters": results.parameters,
        "test_reconstruction_mse": results.reconstruction_mse,
        "ensemble": {
            "branches": ENSEMBLE_BRANCHES,
            "epochs": results.ensemble_epochs,
            "training_images": results.ensemble_images,
            "parameters": results.ensemble_parameters,
            "test_accuracy": results.ensemble_accuracy,
            "prediction_agreement": results.ensemble_agreement,
            "max_logit_difference": results.ensemble_max_logit_difference,
            "first_step_seconds": results.first_step_seconds,
            "first_epoch_seconds": results.first_epoch_seconds,
            "epoch_seconds": results.epoch_seconds,
        },
        "deep_ensemble": {
            "members": DEEP_ENSEMBLE_MEMBERS,
            "epochs": results.deep_ensemble_epochs,
            "parameters": results.deep_ensemble_parameters,
            "calibration_bins": CALIBRATION_BINS,
            "test_scores": results.deep_ensemble_scores,
            "member_test_scores": results.deep_ensemble_members,
            "to_models_max_logit_difference": (
                results.deep_ensemble_to_models_difference
            ),
            "training_seconds": results.deep_ensemble_training_seconds,
            "epoch_seconds": results.deep_ensemble_epoch_seconds,
        },
        "seconds": results.seconds,
    }


def _plot_mixture_weights(results: _Results, path: str) -> None:
    from matplotlib.figure import Figure

    record = np.array(results.weights_over_epochs)
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    epochs_trained = np.arange(len(record))
    for index, name in enumerate(BRANCHES):
        axes.plot(epochs_trained, record[:, index], label=f"{name} branch")
    axes.set_xlabel("epochs trained")
    axes.set_ylabel("mixture weight")
    axes.set_ylim(0, 1)
    axes.set_title("WeightedAverage weights while training")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def _plot_reconstructions(x_test, reconstructions, path: str, count: int = 10):
    from matplotlib.figure import Figure

    rows = [
        ("original", x_test[:count]),
        ("tied", reconstructions["tied"][:count]),
        ("untied", reconstructions["untied"][:count]),
    ]
    figure = Figure(figsize=(count * 0.8, len(rows) * 0.9), dpi=100)
    grid = figure.subplots(len(rows), count)
    for row, (label, images) in enumerate(rows):
        for column in range(count):
            axes = grid[row, column]
            axes.imshow(images[column], cmap="gray_r", vmin=0, vmax=1)
            axes.set_xticks([])
            axes.set_yticks([])
        grid[row, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    figure.tight_layout()
    figure.savefig(path)


def _plot_ensemble_times(results: _Results, path: str) -> None:
    from matplotlib.figure import Figure

    labels = ["separate", "stacked"]
    figure = Figure(figsize=(7, 3.5), dpi=100)
    left, right = figure.subplots(1, 2)
    panels = (
        (left, results.first_step_seconds, "time to the first step (s)"),
        (right, results.epoch_seconds, "time per epoch after the first (s)"),
    )
    for axes, values, title in panels:
        heights = [values[form] or 0.0 for form in ENSEMBLE_FORMS]
        bars = axes.bar(labels, heights, color=["tab:gray", "tab:blue"])
        for bar, form in zip(bars, ENSEMBLE_FORMS, strict=True):
            value = values[form]
            text = "-" if value is None else f"{value:.3g}"
            axes.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
            )
        axes.set_title(title)
        axes.margins(y=0.15)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(
        f"{ENSEMBLE_BRANCHES} MLPs on {keras.backend.backend()}: "
        "separate Dense stacks vs ParallelDense"
    )
    figure.tight_layout()
    figure.savefig(path)
