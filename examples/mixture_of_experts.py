"""A small mixture of experts whose experts specialize, with the router's choices.

The data come from four clusters, and each cluster has its own linear map from
input to target: one network would have to learn all four, while a mixture of
experts can send each cluster to an expert of its own. `MixtureOfExperts` with
`top_k=1` (Switch-style routing, the raw router probability as the gate) learns
both the experts and the routing; the load-balancing loss keeps the experts in
use. After training, `route` shows which expert each sample goes to: a table of
clusters against experts, mostly one expert per cluster.

Install: pip install "keras-tether[BACKEND]" (BACKEND: jax, torch or tensorflow)

Run it as a script (small sizes by default so it finishes in seconds):

    python examples/mixture_of_experts.py --epochs 60 --samples 2048
"""

from __future__ import annotations

import argparse

# keras_tether first: on an install with only JAX or only PyTorch it picks
# that backend before Keras is imported.
import keras_tether  # isort: split

import keras
import numpy as np

CLUSTERS = 4
FEATURES = 8


def make_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs around four centres; each centre's targets follow its own map."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, FEATURES)) * 2
    maps = rng.normal(size=(CLUSTERS, FEATURES, FEATURES)) / np.sqrt(FEATURES)
    cluster = rng.integers(0, CLUSTERS, size=samples)
    x = centres[cluster] + 0.5 * rng.normal(size=(samples, FEATURES))
    y = np.einsum("si,sio->so", x, maps[cluster]) / 2
    return x.astype("float32"), y.astype("float32"), cluster


def build_model(experts: int = CLUSTERS) -> keras.Model:
    """One `MixtureOfExperts` layer, each token routed to one expert."""
    inputs = keras.Input(shape=(FEATURES,))
    moe = keras_tether.layers.MixtureOfExperts(
        num_experts=experts,
        hidden_units=32,
        top_k=1,
        normalize_top_k=False,
        capacity_factor=2.0,
        dispatch="sparse",
        load_balancing_coefficient=0.01,
        name="moe",
    )
    return keras.Model(inputs, moe(inputs))


def routing_table(model: keras.Model, x: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Share of each cluster's samples (rows) sent to each expert (columns)."""
    moe = model.get_layer("moe")
    chosen, _ = moe.route(x)
    chosen = np.asarray(keras.ops.convert_to_numpy(chosen))[:, 0]
    table = np.zeros((CLUSTERS, moe.num_experts))
    np.add.at(table, (cluster, chosen), 1.0)
    return table / np.maximum(table.sum(axis=1, keepdims=True), 1.0)


def main(
    epochs: int = 60, samples: int = 2048, seed: int = 0, verbose: int = 0
) -> tuple[keras.Model, np.ndarray, float]:
    """Trains the mixture; returns the model, its routing table and test MSE."""
    keras.utils.set_random_seed(seed)
    x, y, cluster = make_data(samples, seed)
    x_test, y_test, cluster_test = make_data(max(samples // 4, 64), seed + 1)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, batch_size=256, epochs=epochs, verbose=verbose)
    mse = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0))
    return model, routing_table(model, x_test, cluster_test), mse


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, table, mse = main(args.epochs, args.samples, args.seed, verbose=0)
    print(f"test MSE: {mse:.4f}")
    print(
        f"dropped for lack of capacity: {model.get_layer('moe').dropped_fraction:.1%}"
    )
    print("share of each cluster's samples routed to each expert:")
    print("           " + " ".join(f"expert {e}" for e in range(table.shape[1])))
    for c, row in enumerate(table):
        print(f"cluster {c}  " + " ".join(f"{share:8.2f}" for share in row))
