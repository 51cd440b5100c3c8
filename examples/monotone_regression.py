"""A regressor that is monotone by construction, on scikit-learn's diabetes data.

The question this answers: disease progression a year on should not go down
when body-mass index, blood pressure or serum triglycerides go up, whatever the
network learned. A network whose weights are all positive and whose activations
are increasing is increasing in every input, so the guarantee needs positive
weights, at every step of training and in the model that is served.

Three versions of the same small network are trained on the three features:

- `unconstrained`: plain `Dense` layers, no guarantee;
- `projected`: `kernel_constraint=keras.constraints.NonNeg()`, which clips the
  kernel to zero after each optimizer step (weights stuck at zero stop learning);
- `parametrized`: `Parametrized(Dense, {"kernel": parametrize.Positive()})`,
  whose kernel is `softplus(free)`, positive after every step.

For each it reports the test mean squared error and how often raising one input
lowers the prediction (0 for a monotone model), measured on a grid.

Install: pip install "keras-tether[BACKEND,demo]" (BACKEND: jax, torch or
tensorflow; the `demo` extra brings scikit-learn, whose data set it reads)

Run it as a script (it finishes in well under a minute):

    python examples/monotone_regression.py --epochs 300
"""

from __future__ import annotations

import argparse

# keras_tether first: on an install with only JAX or only PyTorch it picks
# that backend before Keras is imported.
from keras_tether import parametrize  # isort: split

import keras
import numpy as np
from sklearn.datasets import load_diabetes

from keras_tether.layers import Parametrized

FEATURES = ("bmi", "bp", "s5")


def load_data(seed: int = 0):
    """Standardized features and target, split 75/25 at random."""
    data = load_diabetes()
    columns = [data.feature_names.index(name) for name in FEATURES]
    x = data.data[:, columns].astype("float32")
    y = data.target.astype("float32")[:, None]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (y - y.mean()) / y.std()
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.75 * len(x))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])


def _dense(units, kind, activation=None):
    if kind == "projected":
        return keras.layers.Dense(
            units, activation=activation, kernel_constraint=keras.constraints.NonNeg()
        )
    dense = keras.layers.Dense(units, activation=activation)
    if kind == "parametrized":
        return Parametrized(dense, {"kernel": parametrize.Positive()}, initial="sample")
    return dense


def build_model(kind: str, hidden: int = 16) -> keras.Model:
    """`kind` is "unconstrained", "projected" or "parametrized"."""
    inputs = keras.Input((len(FEATURES),))
    hidden_layer = _dense(hidden, kind, activation="tanh")
    outputs = _dense(1, kind)(hidden_layer(inputs))
    return keras.Model(inputs, outputs, name=kind)


def decreasing_fraction(model: keras.Model, points: int = 200, seed: int = 1) -> float:
    """How often raising one input by 0.5 lowers the prediction."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(points, len(FEATURES))).astype("float32")
    raised = [x]
    for feature in range(len(FEATURES)):
        shifted = x.copy()
        shifted[:, feature] += 0.5
        raised.append(shifted)
    predictions = model.predict(
        np.concatenate(raised), batch_size=len(x) * 4, verbose=0
    )
    base, *others = np.split(predictions, len(raised))
    drops = sum(int((other < base - 1e-6).sum()) for other in others)
    return drops / (points * len(FEATURES))


def main(epochs: int = 300, seed: int = 0) -> dict[str, dict[str, float]]:
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    results = {}
    for kind in ("unconstrained", "projected", "parametrized"):
        model = build_model(kind)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        model.fit(x_train, y_train, batch_size=len(x_train), epochs=epochs, verbose=0)
        results[kind] = {
            "test_mse": float(model.evaluate(x_test, y_test, verbose=0)),
            "decreasing": decreasing_fraction(model),
        }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'model':<15} {'test MSE':>9} {'decreasing':>11}")
    for kind, row in main(args.epochs, args.seed).items():
        print(f"{kind:<15} {row['test_mse']:>9.3f} {row['decreasing']:>11.3f}")
