"""`parametrize.LowRank`: weights of bounded rank from two free factors."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether import parametrize
from keras_tether.layers import Parametrized

to_numpy = keras.ops.convert_to_numpy
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _numpy_best_rank(matrix, rank):
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def _singular_values(weight):
    return np.linalg.svd(weight.reshape(-1, weight.shape[-1]), compute_uv=False)


def _product(wrapper, name="kernel"):
    factors = wrapper.free_weight(name)
    return to_numpy(factors["left"]) @ to_numpy(factors["right"])


def test_right_inverse_is_the_best_approximation_eckart_young():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(7, 5)).astype("float32")
    low_rank = parametrize.LowRank(2)
    factors = low_rank.right_inverse(matrix)
    left, right = to_numpy(factors["left"]), to_numpy(factors["right"])
    assert left.shape == (7, 2) and right.shape == (2, 5)
    np.testing.assert_allclose(left @ right, _numpy_best_rank(matrix, 2), atol=1e-5)
    # The split is even: both factors carry sqrt(S).
    np.testing.assert_allclose(
        np.linalg.norm(left, axis=0), np.linalg.norm(right, axis=1), rtol=1e-5
    )
    exact = rng.normal(size=(7, 2)) @ rng.normal(size=(2, 5))
    kept = low_rank.right_inverse(exact.astype("float32"))
    np.testing.assert_allclose(
        to_numpy(kept["left"]) @ to_numpy(kept["right"]), exact, atol=1e-5
    )


def test_registration_projects_the_kernel_and_counts_free_parameters():
    # Explicit names: the paths must not depend on how many layers the
    # session created before this test.
    dense = keras.layers.Dense(6, name="inner")
    dense.build((None, 9))
    kernel = to_numpy(dense.kernel)
    wrapper = Parametrized(dense, {"kernel": parametrize.LowRank(3)}, name="outer")
    assert [w.path for w in wrapper.weights] == [
        "outer/kernel_left",
        "outer/kernel_right",
        "inner/bias",
    ]
    assert wrapper.count_params() == 3 * (9 + 6) + 6
    value = to_numpy(wrapper.parametrized_weight("kernel"))
    np.testing.assert_allclose(value, _numpy_best_rank(kernel, 3), atol=1e-5)
    np.testing.assert_allclose(to_numpy(dense.kernel), value)


def test_sample_has_the_glorot_variance_and_the_rank():
    wrapper = Parametrized(
        keras.layers.Dense(300, use_bias=False),
        {"kernel": parametrize.LowRank(4)},
        initial="sample",
        seed=3,
    )
    wrapper.build((None, 200))
    kernel = to_numpy(wrapper.parametrized_weight("kernel"))
    np.testing.assert_allclose(kernel.var(), 2.0 / (200 + 300), rtol=0.15)
    singular = _singular_values(kernel)
    assert singular[3] > 1e-3 and singular[4] < 1e-5 * singular[0]


@pytest.mark.parametrize(
    "make,call,input_shape",
    [
        (
            lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=5),
            lambda x, w: x @ w,
            (3, 6),
        ),
        (
            lambda: keras.layers.Conv2D(4, 3, use_bias=False),
            None,
            (2, 5, 5, 3),
        ),
        (
            lambda: keras.layers.Embedding(10, 6),
            lambda x, w: w[x],
            None,
        ),
    ],
    ids=["EinsumDense", "Conv2D", "Embedding"],
)
def test_keras_layers_compute_with_the_low_rank_weight(make, call, input_shape):
    rng = np.random.default_rng(1)
    wrapper = Parametrized(make(), {_name(make): parametrize.LowRank(2)})
    if input_shape is None:
        x = rng.integers(0, 10, size=(4, 3))
    else:
        x = rng.normal(size=input_shape).astype("float32")
    y = to_numpy(wrapper(x))
    weight = to_numpy(wrapper.parametrized_weight(_name(make)))
    assert (_singular_values(weight) > 1e-5 * _singular_values(weight)[0]).sum() == 2
    if call is None:  # Conv2D, valid padding: patches times the flattened kernel
        patches = np.stack(
            [
                x[:, i : i + 3, j : j + 3, :].reshape(2, -1)
                for i in range(3)
                for j in range(3)
            ],
            axis=1,
        )
        expected = (patches @ weight.reshape(-1, 4)).reshape(2, 3, 3, 4)
    else:
        expected = call(x, weight)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def _name(make):
    return "embeddings" if isinstance(make(), keras.layers.Embedding) else "kernel"


def test_rank_out_of_range_is_refused():
    with pytest.raises(ValueError, match="Received: rank=0"):
        parametrize.LowRank(0)
    with pytest.raises(TypeError, match="rank"):
        parametrize.LowRank(2.0)
    with pytest.raises(TypeError, match="rank"):
        parametrize.LowRank(True)
    wrapper = Parametrized(keras.layers.Dense(3), {"kernel": parametrize.LowRank(4)})
    with pytest.raises(ValueError, match=r"at most min\(rows, columns\) = 3"):
        wrapper.build((None, 8))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        Parametrized(keras.layers.Dense(3), {"bias": parametrize.LowRank(1)}).build(
            (None, 8)
        )


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4)).astype("float32")
    target = rng.normal(size=(5, 3)).astype("float32")
    wrapper = Parametrized(
        keras.layers.Dense(3, use_bias=False), {"kernel": parametrize.LowRank(2)}
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, wrapper(inputs))
    factors = wrapper.free_weight("kernel")
    left, right = to_numpy(factors["left"]), to_numpy(factors["right"])

    def loss(left, right):
        return np.mean((x @ left @ right - target) ** 2)

    def finite_differences(array, f, step=1e-3):
        gradient = np.zeros_like(array, dtype="float64")
        for index in np.ndindex(array.shape):
            plus, minus = array.astype("float64"), array.astype("float64")
            plus[index] += step
            minus[index] -= step
            gradient[index] = (f(plus) - f(minus)) / (2 * step)
        return gradient

    expected_left = finite_differences(left, lambda a: loss(a, right))
    expected_right = finite_differences(right, lambda a: loss(left, a))
    # One SGD step at learning rate 1 subtracts the gradient.
    model.compile(keras.optimizers.SGD(1.0), "mse")
    model.train_on_batch(x, target)
    np.testing.assert_allclose(
        left - to_numpy(factors["left"]), expected_left, atol=1e-4
    )
    np.testing.assert_allclose(
        right - to_numpy(factors["right"]), expected_right, atol=1e-4
    )


@pytest.mark.parametrize(
    "optimizer",
    [lambda: keras.optimizers.SGD(0.5), lambda: keras.optimizers.Adam(1.0)],
    ids=["SGD", "Adam"],
)
def test_rank_holds_after_fit_at_large_learning_rates(optimizer):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = rng.normal(size=(32, 6)).astype("float32")
    wrapper = Parametrized(keras.layers.Dense(6), {"kernel": parametrize.LowRank(2)})
    inputs = keras.Input((8,))
    model = keras.Model(inputs, wrapper(inputs))
    before = _product(wrapper)
    model.compile(optimizer(), "mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    after = _product(wrapper)
    assert np.isfinite(after).all() and not np.allclose(before, after)
    kernel = to_numpy(wrapper.parametrized_weight("kernel"))
    np.testing.assert_allclose(kernel, after, rtol=1e-4, atol=1e-4)
    singular = _singular_values(kernel.astype("float64"))
    assert singular[2] <= 1e-5 * singular[0]


def _model(seed=4):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((7,))
    wrapper = Parametrized(
        keras.layers.Dense(5, name="low"), {"kernel": parametrize.LowRank(2)}
    )
    outputs = keras.layers.Dense(2, name="head")(wrapper(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    x = rng.normal(size=(16, 7)).astype("float32")
    model.fit(x, rng.normal(size=(16, 2)), epochs=1, verbose=0)
    return model, x


def test_saving_loading_cloning_round_trips(tmp_path):
    model, x = _model()
    reference = model.predict(x, verbose=0)
    paths = [w.path for w in model.weights]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference, atol=1e-6)
    assert [w.path for w in loaded.weights] == paths
    weights_path = str(tmp_path / "model.weights.h5")
    model.save_weights(weights_path)
    twin, _ = _model(seed=5)
    twin.load_weights(weights_path)
    np.testing.assert_allclose(twin.predict(x, verbose=0), reference, atol=1e-6)
    for copy in (
        keras.models.clone_model(model),
        keras.Model.from_config(model.get_config()),
    ):
        assert copy.layers[1].layer is not model.layers[1].layer
        assert copy.count_params() == model.count_params()
        copy.set_weights(model.get_weights())
        np.testing.assert_allclose(copy.predict(x, verbose=0), reference, atol=1e-6)

    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        import keras_tether
        model = keras.saving.load_model({path!r}, safe_mode=True)
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "y.npy")!r}, model.predict(x, verbose=0))
        """
    )
    env = dict(
        os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference, atol=1e-6)


def test_remove_bakes_the_product_into_the_plain_layer(tmp_path):
    model, x = _model()
    reference = model.predict(x, verbose=0)
    wrapper = model.layers[1]
    product = _product(wrapper)
    with pytest.raises(ValueError, match="bake=True"):
        wrapper.remove(bake=False)
    dense = wrapper.remove()
    assert type(dense) is keras.layers.Dense
    assert [w.path for w in dense.weights] == ["low/kernel", "low/bias"]
    np.testing.assert_allclose(to_numpy(dense.kernel), product, atol=1e-6)
    inputs = keras.Input((7,))
    plain = keras.Model(inputs, model.layers[2](dense(inputs)))
    np.testing.assert_allclose(plain.predict(x, verbose=0), reference, atol=1e-5)
    path = str(tmp_path / "plain.keras")
    plain.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference, atol=1e-5)


def test_conformance():
    def make_model():
        inputs = keras.Input((6,))
        layer = Parametrized(keras.layers.Dense(4), {"kernel": parametrize.LowRank(2)})
        return keras.Model(inputs, layer(inputs)), layer

    run_layer_test(
        Parametrized,
        np.random.default_rng(0).normal(size=(8, 6)).astype("float32"),
        make_model=make_model,
        expected_output_shape=(8, 4),
        expected_num_trainable_weights=3,
        atol=1e-6,
    )


def test_config_and_serialization():
    low_rank = parametrize.deserialize(parametrize.serialize(parametrize.LowRank(3)))
    assert isinstance(low_rank, parametrize.LowRank) and low_rank.rank == 3
    assert repr(low_rank) == "LowRank(rank=3)"
