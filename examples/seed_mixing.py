"""Mix the outputs of parallel MLPs with trainable weights that sum to one.

The question this answers: three parallel MLPs each end in a `(10,)` output,
and the model should return `W1 * out1 + W2 * out2 + W3 * out3` with
trainable `W1 + W2 + W3 = 1`; and what if there are N parallel branches?

With keras-tether the mixture is one layer, `WeightedAverage`, called on the
list of branch outputs like `keras.layers.Add`. It learns one logit per
branch and maps them onto the simplex (softmax by default), so the weights
stay non-negative and sum to one at every step, for any N. The script
trains the model, saves it as a plain `.keras` file, loads it back with
`safe_mode=True`, and reads the learned weights from the loaded model with
`mixture_weights` (a NumPy array).

With many branches, hold them in one layer instead of N: `ParallelDense`
keeps the N MLPs' kernels stacked, so the whole ensemble is one matrix
product per layer, and `WeightedAverage(branch_axis=1)` mixes its
`(batch, N, 10)` output. `build_stacked_model` is that form of the same
model; `--stacked` trains it.

Install: pip install "keras-tether[BACKEND]" (BACKEND: jax, torch or tensorflow)

Run it as a script (small sizes by default so it finishes in seconds):

    python examples/seed_mixing.py --branches 3 --epochs 10 --samples 1000
    python examples/seed_mixing.py --branches 7 --save mixed.keras
    python examples/seed_mixing.py --branches 16 --stacked
"""

from __future__ import annotations

import argparse
import os
import tempfile

# Before keras: with no backend named and TensorFlow not installed, this
# chooses an installed one (JAX, else PyTorch) for Keras to use.
import keras_tether  # isort: split

import keras
import numpy as np

INPUT_DIM = 100
HIDDEN_UNITS = 32
OUTPUT_DIM = 10


def build_model(num_branches: int = 3) -> keras.Model:
    """N parallel MLPs on their own inputs, mixed by a `WeightedAverage`."""
    inputs = [
        keras.Input(shape=(INPUT_DIM,), name=f"input_{i + 1}")
        for i in range(num_branches)
    ]
    outputs = []
    for i, x in enumerate(inputs):
        hidden = keras.layers.Dense(HIDDEN_UNITS, activation="relu")(x)
        outputs.append(keras.layers.Dense(OUTPUT_DIM, name=f"mlp_{i + 1}")(hidden))
    mixed = keras_tether.layers.WeightedAverage(name="mixture")(outputs)
    return keras.Model(inputs, mixed)


def build_stacked_model(num_branches: int = 3) -> keras.Model:
    """The same N MLPs as two `ParallelDense` layers, mixed along axis 1.

    The input holds one slice per branch, shape `(batch, N, INPUT_DIM)`.
    """
    inputs = keras.Input(shape=(num_branches, INPUT_DIM), name="inputs")
    hidden = keras_tether.layers.ParallelDense(
        HIDDEN_UNITS, num_branches, activation="relu", per_branch_inputs=True
    )(inputs)
    outputs = keras_tether.layers.ParallelDense(
        OUTPUT_DIM, num_branches, per_branch_inputs=True, name="mlps"
    )(hidden)
    mixed = keras_tether.layers.WeightedAverage(branch_axis=1, name="mixture")(outputs)
    return keras.Model(inputs, mixed)


def main(
    epochs: int = 10,
    samples: int = 1000,
    num_branches: int = 3,
    seed: int = 0,
    verbose: int = 0,
    stacked: bool = False,
    path: str | None = None,
) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """Trains the model of the question on random data, saves it and loads it.

    With `stacked=True`, trains `build_stacked_model` on the same data
    stacked along axis 1.

    Args:
        path: Where to save the `.keras` file. Defaults to a temporary folder
            that is removed afterwards.

    Returns:
        The model loaded back from the file, the mixture weights before
        `fit`, and the mixture weights read from the loaded model.
    """
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = [
        rng.uniform(0, 1, (samples, INPUT_DIM)).astype("float32")
        for _ in range(num_branches)
    ]
    y = rng.uniform(0, 1, (samples, OUTPUT_DIM)).astype("float32")

    model = build_model(num_branches)
    if stacked:
        x = np.stack(x, axis=1)
        model = build_stacked_model(num_branches)
    model.compile(optimizer="adam", loss="mse")
    mixture = model.get_layer("mixture")
    before = mixture.mixture_weights
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=verbose)
    trained = mixture.mixture_weights

    with tempfile.TemporaryDirectory() as scratch:
        file = path or os.path.join(scratch, "seed_mixing.keras")
        model.save(file)
        loaded = keras.saving.load_model(file, safe_mode=True)
    after = loaded.get_layer("mixture").mixture_weights
    # The file holds the trained mixture exactly, and the loaded model computes
    # what the trained one does.
    np.testing.assert_array_equal(after, trained)
    sample = x[:8] if stacked else [branch[:8] for branch in x]
    np.testing.assert_allclose(
        loaded.predict(sample, verbose=0), model.predict(sample, verbose=0), rtol=1e-6
    )
    print(f"mixture weights before fit: {np.round(before, 4)}")
    print(f"mixture weights, loaded:    {np.round(after, 4)} (sum {after.sum():.6f})")
    return loaded, before, after


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument(
        "--stacked",
        action="store_true",
        help="train the ParallelDense + WeightedAverage(branch_axis=1) form",
    )
    parser.add_argument("--save", default=None, help="path of the .keras file")
    args = parser.parse_args()
    main(
        epochs=args.epochs,
        samples=args.samples,
        num_branches=args.branches,
        verbose=1,
        stacked=args.stacked,
        path=args.save,
    )
