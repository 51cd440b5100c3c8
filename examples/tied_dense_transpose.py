"""Tie two Dense layers so that one's kernel is the transpose of the other's.

The question this answers: an encoder `Dense` layer maps `input_dim` features
to `units`, and a decoder should map them back with the transpose of the very
same kernel, trained together; after saving and loading the model, the two
layers must still share one kernel, not hold two copies that drift apart.

With keras-tether the two layers are one `ReversibleDense`, called twice:
`layer(x)` is the encoder (exactly a `Dense`), and `layer(h, reverse=True)` is
the decoder, `sigmoid(h @ transpose(kernel) + reverse_bias)`. One layer owns
the one kernel, so both directions' gradients reach it and it is stored,
saved and counted once. Keras keeps a layer called at two places of a model
as one layer, so loading the `.keras` file (with `safe_mode=True`) brings back
one layer with one kernel, and training the loaded model keeps it tied.

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

from keras_tether.layers import ReversibleDense


def build_model(input_dim: int = 64, units: int = 16) -> keras.Model:
    """An autoencoder whose decoder kernel is the transposed encoder kernel."""
    inputs = keras.Input(shape=(input_dim,), name="features")
    tied = ReversibleDense(
        units, activation="relu", reverse_activation="sigmoid", name="tied"
    )
    code = tied(inputs)  # the encoder
    outputs = tied(code, reverse=True)  # the decoder, on the same kernel
    return keras.Model(inputs, outputs, name="tied_pair")


def kernels_tied(model: keras.Model) -> bool:
    """Whether the whole model computes with one kernel, both ways.

    Checked against NumPy: `model(x)` must equal
    `sigmoid(relu(x @ kernel + bias) @ transpose(kernel) + reverse_bias)`.
    """
    layer = model.get_layer("tied")
    kernel, bias, reverse_bias = (
        keras.ops.convert_to_numpy(w)
        for w in (layer.kernel, layer.bias, layer.reverse_bias)
    )
    x = np.random.default_rng(1).random(size=(4, kernel.shape[0])).astype("float32")
    hidden = np.maximum(x @ kernel + bias, 0.0)
    expected = 1.0 / (1.0 + np.exp(-(hidden @ kernel.T + reverse_bias)))
    actual = keras.ops.convert_to_numpy(model(x))
    one_kernel = len([w for w in model.weights if len(w.shape) == 2]) == 1
    return one_kernel and np.allclose(actual, expected, atol=1e-5)


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
        print(f"  tie: {tie.layer} reads {tie.variables}, used {tie.uses}")

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
        keras.ops.convert_to_numpy(loaded.get_layer("tied").kernel),
        keras.ops.convert_to_numpy(model.get_layer("tied").kernel),
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
