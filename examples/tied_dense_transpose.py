"""Tie two Dense layers so that one's kernel is the transpose of the other's.

The question this answers: an encoder `Dense` layer maps `input_dim` features
to `units`, and a decoder should map them back with the transpose of the very
same kernel, trained together; after saving and loading the model, the two
layers must still share one kernel, not hold two copies that drift apart.

With keras-tether the decoder is `DenseTranspose(encoder)`. It reads the
encoder's kernel, transposed, at every call and owns only its bias, so both
layers' gradients reach the one kernel and it is stored, saved and counted
once. Loading the `.keras` file (with `safe_mode=True`) rebuilds the tie: the
loaded decoder computes with the loaded encoder's kernel, and training the
loaded model keeps them tied.

Install: pip install "keras-tether[BACKEND]" (BACKEND: jax, torch or tensorflow)

Run it as a script (small sizes by default so it finishes in seconds):

    python examples/tied_dense_transpose.py --input-dim 64 --units 16 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import tempfile

# Before keras: with no backend named and TensorFlow not installed, this
# chooses an installed one (JAX, else PyTorch) for Keras to use.
from keras_tether import ties  # isort: split

import keras
import numpy as np

from keras_tether.layers import DenseTranspose


def build_model(input_dim: int = 64, units: int = 16) -> keras.Model:
    """An autoencoder whose decoder kernel is the transposed encoder kernel."""
    inputs = keras.Input(shape=(input_dim,), name="features")
    encoder = keras.layers.Dense(units, activation="relu", name="encoder")
    decoder = DenseTranspose(encoder, activation="sigmoid", name="decoder")
    return keras.Model(inputs, decoder(encoder(inputs)), name="tied_pair")


def kernels_tied(model: keras.Model) -> bool:
    """Whether the decoder computes with the encoder's current kernel, transposed.

    Checked against NumPy: `decoder(h)` must equal
    `sigmoid(h @ transpose(encoder.kernel) + decoder.bias)`.
    """
    encoder = model.get_layer("encoder")
    decoder = model.get_layer("decoder")
    kernel = keras.ops.convert_to_numpy(encoder.kernel)
    bias = keras.ops.convert_to_numpy(decoder.bias)
    hidden = np.random.default_rng(1).normal(size=(4, kernel.shape[1]))
    hidden = hidden.astype("float32")
    expected = 1.0 / (1.0 + np.exp(-(hidden @ kernel.T + bias)))
    actual = keras.ops.convert_to_numpy(decoder(hidden))
    return decoder.source is encoder and np.allclose(actual, expected, atol=1e-5)


def _data(samples: int, input_dim: int, rng: np.random.Generator) -> np.ndarray:
    # Features driven by a few hidden factors, so there is something to learn.
    factors = rng.normal(size=(samples, 4))
    mixing = rng.normal(size=(4, input_dim))
    return (1.0 / (1.0 + np.exp(-factors @ mixing))).astype("float32")


def main(
    epochs: int = 5,
    samples: int = 512,
    input_dim: int = 64,
    units: int = 16,
    seed: int = 0,
    verbose: int = 0,
    path: str | None = None,
) -> tuple[keras.Model, keras.Model]:
    """Trains the tied pair, saves it, loads it, and checks the tie survived.

    Args:
        path: Where to save the `.keras` file. Defaults to a temporary folder
            that is removed afterwards.

    Returns:
        The trained model and the model loaded back from the file (trained
        for one more epoch, to show it trains tied).
    """
    keras.utils.set_random_seed(seed)
    x = _data(samples, input_dim, np.random.default_rng(seed))

    model = build_model(input_dim, units)
    model.compile(optimizer="adam", loss="mse")
    own_params = input_dim * units + units + input_dim  # one kernel, two biases
    assert model.count_params() == own_params
    model.fit(x, x, epochs=epochs, batch_size=32, verbose=verbose)
    assert kernels_tied(model)
    print(f"trained: {model.count_params()} parameters, one {input_dim}x{units} kernel")
    for tie in ties.list_ties(model):
        print(f"  tie: {tie.layer} reads {tie.variables} ({tie.transform})")

    with tempfile.TemporaryDirectory() as scratch:
        file = path or os.path.join(scratch, "tied_pair.keras")
        model.save(file)
        loaded = keras.saving.load_model(file, safe_mode=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x[:8])),
        keras.ops.convert_to_numpy(model(x[:8])),
        rtol=1e-6,
        atol=1e-6,
    )
    assert kernels_tied(loaded)
    assert loaded.count_params() == own_params

    loaded.compile(optimizer="adam", loss="mse")
    loaded.fit(x, x, epochs=1, batch_size=32, verbose=verbose)
    assert kernels_tied(loaded)
    moved = not np.array_equal(
        keras.ops.convert_to_numpy(loaded.get_layer("encoder").kernel),
        keras.ops.convert_to_numpy(model.get_layer("encoder").kernel),
    )
    print(f"loaded: same outputs, still tied after training on (kernel moved: {moved})")
    return model, loaded


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dim", type=int, default=64)
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--save", default=None, help="path of the .keras file")
    args = parser.parse_args()
    main(
        epochs=args.epochs,
        samples=args.samples,
        input_dim=args.input_dim,
        units=args.units,
        verbose=1,
        path=args.save,
    )
