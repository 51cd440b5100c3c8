"""A deep ensemble of 8 small CNNs on 8x8 digits, trained as one layer.

The question this answers: train N copies of a network (here a CNN with
batch normalization and dropout) from different random starts, and average
their predictions, a deep ensemble, without writing N models or N training
loops. `keras_tether.layers.Ensemble(cnn, branches=8)` holds the 8 CNNs as
one layer whose output has a branch axis, `(batch, 8, 10)`; each branch has
its own weights, its own batch-norm statistics and its own dropout masks, and
all 8 train in one `fit`.

The script reports the test accuracy and negative log-likelihood of each
member and of the ensemble's averaged probabilities, saves the model to a
`.keras` file, loads it again, and splits the ensemble back into 8 separate
Keras models with `to_models()`.

Install: pip install "keras-tether[BACKEND,demo]"

Needs scikit-learn (for the digits data), in the `demo` extra.

Run it as a script (it finishes in well under a minute):

    python examples/ensemble_digits.py --epochs 20
"""

from __future__ import annotations

import argparse
import os
import tempfile

# keras_tether first: on an install with only JAX or only PyTorch it picks
# that backend before Keras is imported.
import keras_tether  # isort: split

import keras
import numpy as np
from sklearn.datasets import load_digits

MEMBERS = 8


def load_data(seed: int = 0):
    """Digits scaled to [0, 1] as (8, 8, 1) images, split 75/25 at random."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.75 * len(x))
    return (x[order[:split]], y[order[:split]]), (x[order[split:]], y[order[split:]])


def cnn() -> keras.Model:
    """One member: a small CNN that ends in 10 logits."""
    # channels_first: torch.vmap batches this convolution, not the
    # channels_last one of Keras' torch backend.
    inputs = keras.Input((1, 8, 8))
    x = keras.layers.Conv2D(16, 3, padding="same", data_format="channels_first")(inputs)
    x = keras.layers.BatchNormalization(axis=1)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(data_format="channels_first")(x)
    x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="cnn")


def build_model(members: int = MEMBERS, seed: int = 0) -> keras.Model:
    """The ensemble: `members` CNNs, each giving its own logits."""
    inputs = keras.Input((1, 8, 8))
    ensemble = keras_tether.layers.Ensemble(cnn(), branches=members, seed=seed)
    return keras.Model(inputs, ensemble(inputs), name="deep_ensemble")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    accuracy = float(np.mean(probabilities.argmax(axis=-1) == labels))
    likelihood = probabilities[np.arange(len(labels)), labels]
    return accuracy, float(-np.mean(np.log(np.maximum(likelihood, 1e-12))))


def main(
    epochs: int = 20, members: int = MEMBERS, seed: int = 0, samples: int | None = None
) -> dict:
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    if samples is not None:  # a quick run on part of the data
        x_train, y_train = x_train[:samples], y_train[:samples]
        x_test, y_test = x_test[:samples], y_test[:samples]
    x_train, x_test = x_train.transpose(0, 3, 1, 2), x_test.transpose(0, 3, 1, 2)
    model = build_model(members, seed)
    # Every member learns the labels: the targets repeat along the branch axis.
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    targets = np.repeat(y_train[:, None], members, axis=1)
    model.fit(x_train, targets, epochs=epochs, batch_size=64, verbose=0)

    probabilities = _softmax(model.predict(x_test, verbose=0))
    member_scores = [_scores(probabilities[:, n], y_test) for n in range(members)]
    ensemble_scores = _scores(probabilities.mean(axis=1), y_test)
    for n, (accuracy, nll) in enumerate(member_scores):
        print(f"member {n}: accuracy {accuracy:.3f}, NLL {nll:.3f}")
    print(f"ensemble: accuracy {ensemble_scores[0]:.3f}, NLL {ensemble_scores[1]:.3f}")

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "deep_ensemble.keras")
        model.save(path)
        loaded = keras.models.load_model(path, safe_mode=True)
    same = np.allclose(
        loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0)
    )
    print(f"saved and loaded: same predictions {same}")

    separate = model.layers[-1].to_models()
    first = separate[0].predict(x_test, verbose=0)
    print(
        "member 0 as a separate model: same logits "
        f"{np.allclose(first, model.predict(x_test, verbose=0)[:, 0], atol=1e-5)}"
    )
    return {
        "members": member_scores,
        "ensemble": ensemble_scores,
        "reloaded_equal": same,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--members", type=int, default=MEMBERS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.members, args.seed)
