"""`Parametrized`: layers that compute with constrained weights on every backend."""

import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether import parametrize
from keras_tether.layers import Parametrized, ReversibleDense

to_numpy = keras.ops.convert_to_numpy
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def _orthonormal_error(kernel):
    kernel = kernel.reshape(-1, kernel.shape[-1])
    if kernel.shape[0] < kernel.shape[1]:
        kernel = kernel.T
    return np.abs(kernel.T @ kernel - np.eye(kernel.shape[1])).max()


# Distance of a weight from each set, computed with NumPy.
VIOLATIONS = {
    "Positive": lambda w: max(0.0, -w.min()),
    "Orthogonal": _orthonormal_error,
    "UnitNorm": lambda w: np.abs(np.linalg.norm(w, axis=0) - 1).max(),
    "SpectralNorm": lambda w: abs(np.linalg.svd(w, compute_uv=False)[0] - 1),
    "Symmetric": lambda w: np.abs(w - w.T).max(),
    "Skew": lambda w: np.abs(w + w.T).max(),
    "Simplex": lambda w: max(np.abs(w.sum(axis=0) - 1).max(), -w.min()),
}


def _all_parametrizations():
    return {
        "Positive": parametrize.Positive(),
        "Orthogonal": parametrize.Orthogonal(),
        "UnitNorm": parametrize.UnitNorm(),
        "SpectralNorm": parametrize.SpectralNorm(exact=True),
        "Symmetric": parametrize.Symmetric(),
        "Skew": parametrize.Skew(),
        "Simplex": parametrize.Simplex(axis=0),
    }


def _branches_model(width=5):
    """One parametrized Dense per parametrization, side by side."""
    inputs = keras.Input((width,))
    wrappers = {}
    outputs = []
    for name, p in _all_parametrizations().items():
        wrapper = Parametrized(keras.layers.Dense(width), {"kernel": p})
        wrappers[name] = wrapper
        outputs.append(wrapper(inputs))
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    return model, wrappers


def _violations(wrappers):
    return {
        name: VIOLATIONS[name](to_numpy(w.parametrized_weight("kernel")))
        for name, w in wrappers.items()
    }


class _CheckEveryStep(keras.callbacks.Callback):
    def __init__(self, wrappers):
        super().__init__()
        self.wrappers = wrappers
        self.worst = {}
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.model  # noqa: B018 - on JAX, reading it syncs the trained state
        self.steps += 1
        for name, value in _violations(self.wrappers).items():
            self.worst[name] = max(self.worst.get(name, 0.0), value)


def _data(samples=48, width=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, width)).astype("float32")
    y = rng.normal(size=(samples, 7 * width)).astype("float32")
    return x, y


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(learning_rate=5.0),
        lambda: keras.optimizers.Adam(1.0),
    ],
    ids=["sgd", "adam"],
)
def test_constraints_hold_after_every_step_at_large_learning_rates(optimizer):
    model, wrappers = _branches_model()
    x, y = _data()
    before = {n: to_numpy(w.free_weight("kernel")).copy() for n, w in wrappers.items()}
    check = _CheckEveryStep(wrappers)
    model.compile(optimizer=optimizer(), loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[check])
    assert check.steps == 6
    for name, worst in check.worst.items():
        assert worst < 1e-5, f"{name} left its set by {worst}"
    for name, wrapper in wrappers.items():  # the free parameters did train
        after = to_numpy(wrapper.free_weight("kernel"))
        assert not np.allclose(after, before[name]), name


def test_keras_constraint_projection_leaves_gradient_unaware_of_the_set():
    # The contrast the parametrizations exist for: with a projection the
    # optimizer steps in the ambient space, so the weight it produces before
    # projecting is far outside the set at this learning rate.
    x, y = _data(width=5)
    dense = keras.layers.Dense(5, kernel_constraint=keras.constraints.UnitNorm(axis=0))
    model = keras.Sequential([keras.Input((5,)), dense])
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    kernel = to_numpy(dense.kernel)
    with keras.utils.custom_object_scope({}):
        model.fit(x, y[:, :5], batch_size=48, epochs=1, verbose=0)
    after = to_numpy(dense.kernel)
    np.testing.assert_allclose(np.linalg.norm(after, axis=0), 1.0, atol=1e-5)
    assert not np.allclose(after, kernel)


def test_predict_equals_the_training_forward_pass():
    model, wrappers = _branches_model()
    inputs = model.inputs[0]
    spectral = Parametrized(
        keras.layers.Dense(5), {"kernel": parametrize.SpectralNorm()}
    )
    weight_norm = Parametrized(
        keras.layers.Dense(5), {"kernel": parametrize.WeightNorm()}
    )
    outputs = [model.outputs[0], spectral(inputs), weight_norm(inputs)]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    x, _ = _data()
    y = np.random.default_rng(2).normal(size=(48, 45)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    u_before = to_numpy(spectral.weights[0]).copy()
    trained = to_numpy(model(x, training=True))  # advances the power iteration
    assert not np.allclose(to_numpy(spectral.weights[0]), u_before)
    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(predicted, trained, atol=1e-5)
    # And both are the plain computation with the constrained kernels.
    for wrapper, column in [(spectral, 35), (weight_norm, 40)]:
        kernel = to_numpy(wrapper.parametrized_weight("kernel"))
        bias = to_numpy(wrapper.layer.bias)
        np.testing.assert_allclose(
            predicted[:, column : column + 5], x @ kernel + bias, atol=1e-5
        )


def _wrapped_dense(parametrization, units=4, name=None):
    return Parametrized(
        keras.layers.Dense(units), {"kernel": parametrization}, name=name
    )


def test_conformance_orthogonal():
    def make_model():
        inputs = keras.Input((6,))
        layer = _wrapped_dense(parametrize.Orthogonal())
        return keras.Model(inputs, layer(inputs)), layer

    run_layer_test(
        Parametrized,
        np.random.default_rng(0).normal(size=(8, 6)).astype("float32"),
        make_model=make_model,
        expected_output_shape=(8, 4),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=1,  # the Cayley map's column signs
        atol=1e-6,
    )


def test_conformance_stateful_parametrizations():
    def make_model():
        inputs = keras.Input((6,))
        layer = Parametrized(
            keras.layers.Dense(4),
            {"kernel": parametrize.SpectralNorm(), "bias": parametrize.Simplex(axis=0)},
        )
        return keras.Model(inputs, layer(inputs)), layer

    run_layer_test(
        Parametrized,
        np.random.default_rng(0).normal(size=(8, 6)).astype("float32"),
        make_model=make_model,
        expected_output_shape=(8, 4),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=1,
        atol=1e-6,
    )


def test_one_variable_per_weight_with_stable_paths():
    dense = keras.layers.Dense(3, name="proj")
    dense.build((None, 4))
    kernel = dense.kernel
    wrapper = Parametrized(dense, {"kernel": parametrize.WeightNorm()}, name="wn")
    assert wrapper.free_weight("kernel") is kernel  # the layer's own variable
    assert [w.path for w in wrapper.weights] == [
        "wn/kernel_magnitude",
        "proj/kernel",
        "proj/bias",
    ]
    assert dense.weights == [kernel, dense.bias]
    assert wrapper.count_params() == 3 + 12 + 3


def test_registration_keeps_the_current_weight():
    dense = keras.layers.Dense(4, kernel_initializer="orthogonal")
    dense.build((None, 6))
    kernel = to_numpy(dense.kernel).copy()
    positive = keras.layers.Dense(3, kernel_initializer="ones")
    positive.build((None, 2))
    Parametrized(dense, {"kernel": parametrize.Orthogonal()})
    Parametrized(positive, {"kernel": parametrize.Positive()})
    np.testing.assert_allclose(to_numpy(dense.kernel), kernel, atol=1e-5)
    np.testing.assert_allclose(to_numpy(positive.kernel), np.ones((2, 3)), rtol=1e-5)


def test_registration_projects_a_weight_outside_the_set():
    dense = keras.layers.Dense(3)
    dense.build((None, 5))
    kernel = to_numpy(dense.kernel).astype(np.float64)
    Parametrized(dense, {"kernel": parametrize.Orthogonal()})
    u, _, vt = np.linalg.svd(kernel, full_matrices=False)
    np.testing.assert_allclose(to_numpy(dense.kernel), u @ vt, atol=1e-5)


def test_initial_sample_draws_from_the_set():
    dense = keras.layers.Dense(5, kernel_initializer="ones")
    wrapper = Parametrized(
        dense, {"kernel": parametrize.Orthogonal()}, initial="sample"
    )
    wrapper.build((None, 5))
    kernel = to_numpy(dense.kernel)
    assert _orthonormal_error(kernel) < 1e-5
    assert np.abs(kernel - np.ones((5, 5))).max() > 0.5


# (layer, weight name, input, parametrization), for layers used unchanged.
LAYERS = [
    ("dense", lambda: keras.layers.Dense(3), "kernel", (2, 4)),
    (
        "einsum_dense",
        lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c"),
        "kernel",
        (2, 4),
    ),
    ("conv1d", lambda: keras.layers.Conv1D(3, 2), "kernel", (2, 5, 2)),
    ("conv2d", lambda: keras.layers.Conv2D(3, 2), "kernel", (2, 4, 4, 2)),
    ("conv3d", lambda: keras.layers.Conv3D(3, 2), "kernel", (2, 3, 3, 3, 2)),
    (
        "conv1d_transpose",
        lambda: keras.layers.Conv1DTranspose(3, 2),
        "kernel",
        (2, 5, 2),
    ),
    (
        "conv2d_transpose",
        lambda: keras.layers.Conv2DTranspose(3, 2),
        "kernel",
        (2, 4, 4, 2),
    ),
    (
        "conv3d_transpose",
        lambda: keras.layers.Conv3DTranspose(3, 2),
        "kernel",
        (2, 3, 3, 3, 2),
    ),
    ("embedding", lambda: keras.layers.Embedding(7, 3), "embeddings", (2, 4)),
]


@pytest.mark.parametrize("name,make,weight,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_keras_layers_compute_with_the_constrained_weight(name, make, weight, shape):
    rng = np.random.default_rng(0)
    if name == "embedding":
        x = rng.integers(0, 7, size=shape).astype("int32")
    else:
        x = rng.normal(size=shape).astype("float32")
    layer = make()
    wrapper = Parametrized(layer, {weight: parametrize.UnitNorm()})
    wrapper(x)
    free = to_numpy(wrapper.free_weight(weight))
    axes = tuple(range(free.ndim - 1))
    # Move the free parameter off the sphere: the output must not change.
    wrapper.free_weight(weight).assign(free * 3.0)
    output = to_numpy(wrapper(x))
    constrained = free / np.sqrt((free**2).sum(axis=axes, keepdims=True))
    np.testing.assert_allclose(
        to_numpy(wrapper.parametrized_weight(weight)), constrained, atol=1e-6
    )
    plain = wrapper.remove()  # the same layer with the constrained weight baked in
    np.testing.assert_allclose(to_numpy(getattr(plain, weight)), constrained, atol=1e-6)
    np.testing.assert_allclose(output, to_numpy(plain(x)), atol=1e-5)


def test_tied_transpose_reads_the_constrained_kernel():
    inputs = keras.Input((6,))
    encoder = ReversibleDense(3, name="encoder")
    wrapper = Parametrized(encoder, {"kernel": parametrize.Orthogonal()})
    model = keras.Model(inputs, wrapper(wrapper(inputs), reverse=True))
    assert len(model.trainable_weights) == 3  # one kernel, two biases
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    kernel = to_numpy(wrapper.parametrized_weight("kernel"))
    assert _orthonormal_error(kernel) < 1e-5
    hidden = x @ kernel + to_numpy(encoder.bias)
    expected = hidden @ kernel.T + to_numpy(encoder.reverse_bias)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(encoder.kernel), kernel, atol=1e-6)


def test_remove_bakes_the_constrained_value():
    wrapper = _wrapped_dense(parametrize.Positive())
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    output = to_numpy(wrapper(x))
    plain = wrapper.remove()
    assert type(plain) is keras.layers.Dense
    assert (to_numpy(plain.kernel) > 0).all()
    np.testing.assert_allclose(to_numpy(plain(x)), output, atol=1e-6)
    assert keras.saving.serialize_keras_object(plain)["class_name"] == "Dense"
    with pytest.raises(ValueError, match="remove"):
        wrapper(x)


def test_remove_without_baking_keeps_the_free_parameter():
    wrapper = _wrapped_dense(parametrize.Positive())
    wrapper.build((None, 5))
    free = to_numpy(wrapper.free_weight("kernel")).copy()
    plain = wrapper.remove(bake=False)
    np.testing.assert_allclose(to_numpy(plain.kernel), free)
    with pytest.raises(TypeError, match="bake"):
        _wrapped_dense(parametrize.Positive()).remove(bake="yes")


def _saved_model():
    inputs = keras.Input((5,))
    a = Parametrized(
        keras.layers.Dense(4, name="a"), {"kernel": parametrize.Orthogonal()}
    )
    b = Parametrized(
        keras.layers.Dense(4, name="b"),
        {"kernel": parametrize.SpectralNorm(), "bias": parametrize.Positive()},
    )
    c = Parametrized(
        keras.layers.Dense(4, name="c"), {"kernel": parametrize.WeightNorm()}
    )
    model = keras.Model(inputs, c(b(a(inputs))))
    rng = np.random.default_rng(0)
    for weight in model.weights:  # values no initializer would give
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    x = rng.normal(size=(16, 5)).astype("float32")
    return model, x


def test_keras_file_and_weights_round_trips(tmp_path):
    model, x = _saved_model()
    reference = model.predict(x, verbose=0)
    paths = [w.path for w in model.weights]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), reference)
    assert [w.path for w in loaded.weights] == paths
    weights_path = str(tmp_path / "model.weights.h5")
    model.save_weights(weights_path)
    twin, _ = _saved_model()
    twin.load_weights(weights_path)
    np.testing.assert_array_equal(twin.predict(x, verbose=0), reference)


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="on JAX, test_data_parallel_on_virtual_devices reloads in its fresh process",
)
def test_keras_file_loads_in_a_fresh_process(tmp_path):
    model, x = _saved_model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        import keras_tether  # registers the classes
        model = keras.saving.load_model({path!r}, safe_mode=True)
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "y.npy")!r}, model.predict(x, verbose=0))
        """
    )
    env = dict(
        os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    np.testing.assert_array_equal(
        np.load(tmp_path / "y.npy"), model.predict(x, verbose=0)
    )


def test_clone_model_and_from_config_give_independent_parametrized_copies():
    model, x = _saved_model()
    reference = model.predict(x, verbose=0)
    for copy in (
        keras.models.clone_model(model),
        keras.Model.from_config(model.get_config()),
    ):
        wrappers = [la for la in copy.layers if isinstance(la, Parametrized)]
        assert [type(w.layer).__name__ for w in wrappers] == ["Dense"] * 3
        assert wrappers[0].layer is not model.layers[1].layer
        copy.set_weights(model.get_weights())
        np.testing.assert_allclose(copy.predict(x, verbose=0), reference, atol=1e-6)
        kernel = to_numpy(wrappers[0].parametrized_weight("kernel"))
        assert _orthonormal_error(kernel) < 1e-5
    # The original is untouched and still constrained.
    np.testing.assert_array_equal(model.predict(x, verbose=0), reference)


def test_mixed_precision_computes_the_parametrization_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    wrapper = _wrapped_dense(parametrize.Orthogonal("qr"), units=16)
    x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    output = wrapper(x)
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    kernel = wrapper.parametrized_weight("kernel")
    assert keras.backend.standardize_dtype(kernel.dtype) == "float32"
    assert _orthonormal_error(to_numpy(kernel)) < 1e-5
    free = to_numpy(wrapper.free_weight("kernel")).astype(np.float64)
    q, r = np.linalg.qr(free)
    expected = x @ (q * np.sign(np.diag(r)))
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-2)


def test_spectral_norm_matches_a_numpy_reference_on_every_backend():
    """Five SGD steps of a spectrally normalized linear map, against NumPy.

    The reference runs the documented semantics: each training step first
    advances `u` by one power iteration, then divides by `||W u||` with `u`
    held fixed; gradients are finite differences in float64.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4))
    t = rng.normal(size=(8, 3))
    initial = np.arange(12.0).reshape(4, 3) / 3.0

    dense = keras.layers.Dense(
        3, use_bias=False, kernel_initializer=keras.initializers.Constant(initial)
    )
    wrapper = Parametrized(dense, {"kernel": parametrize.SpectralNorm()})
    model = keras.Sequential([keras.Input((4,)), wrapper])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(
        x.astype("float32"), t.astype("float32"), batch_size=8, epochs=5, verbose=0
    )

    def unit(v):
        return v / np.linalg.norm(v)

    _, s, vt = np.linalg.svd(initial)
    w = initial / s[0]
    u = vt[0]
    for _ in range(5):
        u = unit(unit(w @ u) @ w)

        def loss(m, u=u):
            return np.mean((x @ (m / np.linalg.norm(m @ u)) - t) ** 2)

        grad = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            step = np.zeros_like(w)
            step[index] = 1e-6
            grad[index] = (loss(w + step) - loss(w - step)) / 2e-6
        w = w - 0.1 * grad
    np.testing.assert_allclose(to_numpy(wrapper.free_weight("kernel")), w, atol=1e-5)
    np.testing.assert_allclose(
        np.abs(to_numpy(wrapper.weights[0])), np.abs(u), atol=1e-5
    )
    expected = x @ (w / np.linalg.norm(w @ u))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)


def test_keras_spectral_normalization_differs_by_backend():
    """What `keras.layers.SpectralNormalization` does, measured (Keras 3.15)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    t = rng.normal(size=(32, 3)).astype("float32")
    initial = np.arange(12.0).reshape(4, 3) / 3.0
    dense = keras.layers.Dense(
        3, use_bias=False, kernel_initializer=keras.initializers.Constant(initial)
    )
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.SpectralNormalization(dense)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, t, batch_size=8, epochs=2, verbose=0)
    kernel = to_numpy(dense.kernel)
    sigma = np.linalg.svd(kernel, compute_uv=False)[0]
    # `predict` computes with the stored kernel as it is.
    np.testing.assert_allclose(model.predict(x, verbose=0), x @ kernel, atol=1e-5)
    if keras.backend.backend() == "jax":
        # The stateless training step drops the assignment: never normalized.
        assert sigma == pytest.approx(
            np.linalg.svd(initial, compute_uv=False)[0], rel=1e-3
        )
    else:
        assert sigma == pytest.approx(1.0, abs=0.05)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX distribution API")
def test_data_parallel_on_virtual_devices(tmp_path):
    # The fresh process also loads a model saved here, under the distribution.
    saved, x_saved = _saved_model()
    saved.save(str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x_saved)
    script = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        os.environ["KERAS_BACKEND"] = "jax"
        import json
        import keras, numpy as np
        from keras_tether import parametrize
        from keras_tether.layers import Parametrized
        numpy = keras.ops.convert_to_numpy
        devices = keras.distribution.list_devices("cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        inputs = keras.Input((6,))
        a = Parametrized(keras.layers.Dense(6), {"kernel": parametrize.Orthogonal()})
        b = Parametrized(keras.layers.Dense(3), {"kernel": parametrize.SpectralNorm()})
        model = keras.Model(inputs, b(a(inputs)))
        model.compile(optimizer=keras.optimizers.Adam(0.5), loss="mse")
        x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
        u0 = numpy(b.weights[0])
        model.fit(x, x[:, :3], batch_size=16, epochs=2, verbose=0)
        ka = numpy(a.parametrized_weight("kernel"))
        kb = numpy(b.parametrized_weight("kernel"))
        free = numpy(b.free_weight("kernel"))
        u = numpy(b.weights[0]) / np.linalg.norm(numpy(b.weights[0]))
        assert b.weights[0].path.endswith("kernel_u"), b.weights[0].path
        out = model.predict(x, verbose=0)
        manual = (x @ ka + numpy(a.layer.bias)) @ kb + numpy(b.layer.bias)
        print(json.dumps({
            "devices": len(devices),
            "orthogonal": float(np.abs(ka.T @ ka - np.eye(6)).max()),
            "sigma": float(np.linalg.svd(kb, compute_uv=False)[0]),
            "formula_error": float(np.abs(kb - free / np.linalg.norm(free @ u)).max()),
            "u_moved": bool(not np.allclose(u0, numpy(b.weights[0]))),
            "predict_error": float(np.abs(out - manual).max()),
        }))
        loaded = keras.saving.load_model(TMP + "/model.keras", safe_mode=True)
        np.save(TMP + "/y.npy", loaded.predict(np.load(TMP + "/x.npy"), verbose=0))
        """
    ).replace("TMP", repr(str(tmp_path)))
    env = dict(
        os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["orthogonal"] < 1e-5
    # One power-iteration step per training call: the kernel is the free
    # parameter over ||free u|| with the stored u, exactly. That estimate never
    # exceeds the true norm, and it follows it closely, not exactly.
    assert report["formula_error"] < 1e-5
    assert 1.0 - 1e-5 <= report["sigma"] < 1.2
    assert report["u_moved"]
    assert report["predict_error"] < 1e-4
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), saved.predict(x_saved, verbose=0), atol=1e-6
    )


def test_notebook_reuse_of_names_keeps_models_apart():
    first = _wrapped_dense(parametrize.Positive(), name="same")
    second = _wrapped_dense(parametrize.Orthogonal(), name="same")
    x = np.ones((2, 4), dtype="float32")
    first(x)
    second(x)
    assert (to_numpy(first.parametrized_weight("kernel")) > 0).all()
    assert _orthonormal_error(to_numpy(second.parametrized_weight("kernel"))) < 1e-5
    assert type(first.layer) is type(second.layer)  # one subclass per class


@pytest.mark.parametrize(
    "make,error,match",
    [
        (
            lambda: Parametrized("dense", {"kernel": parametrize.Positive()}),
            TypeError,
            "layer",
        ),
        (
            lambda: Parametrized(keras.layers.Dense(2), [parametrize.Positive()]),
            TypeError,
            "parametrizations",
        ),
        (
            lambda: Parametrized(keras.layers.Dense(2), {}),
            ValueError,
            "parametrizations",
        ),
        (
            lambda: Parametrized(keras.layers.Dense(2), {"kernel": "orthogonal"}),
            TypeError,
            "Parametrization",
        ),
        (
            lambda: Parametrized(
                keras.layers.Dense(2),
                {"kernel": parametrize.Positive()},
                initial="zeros",
            ),
            ValueError,
            "initial",
        ),
        (
            lambda: Parametrized(
                keras.layers.Dense(2), {"kernel": parametrize.Positive()}, seed=1.5
            ),
            TypeError,
            "seed",
        ),
    ],
)
def test_invalid_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_unknown_weight_names_its_variables():
    wrapper = Parametrized(keras.layers.Dense(2), {"kernal": parametrize.Positive()})
    with pytest.raises(ValueError, match=r"\['bias', 'kernel'\].*kernal"):
        wrapper.build((None, 3))


def test_a_layer_and_a_parametrization_are_wrapped_once():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    shared = parametrize.Orthogonal()
    Parametrized(dense, {"kernel": shared})
    with pytest.raises(ValueError, match="already wrapped"):
        Parametrized(dense, {"bias": parametrize.Positive()})
    other = keras.layers.Dense(2)
    with pytest.raises(ValueError, match="new instance"):
        Parametrized(other, {"kernel": shared})
    with pytest.raises(AttributeError, match="parametrized"):
        dense.kernel = None


def test_docs_page_blocks_run_standalone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(os.path.join(ROOT, "docs", "parametrize.md")) as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), flags=re.DOTALL)
    assert len(blocks) >= 3
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/parametrize.md block {index}", "exec"), {})


def test_monotone_regression_example_runs():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import monotone_regression
    finally:
        sys.path.pop(0)
    results = monotone_regression.main(epochs=5)
    assert set(results) == {"unconstrained", "projected", "parametrized"}
    assert results["parametrized"]["decreasing"] == 0.0
    assert results["projected"]["decreasing"] == 0.0
    assert all(np.isfinite(row["test_mse"]) for row in results.values())


def test_parallel_dense_computes_with_per_branch_unit_norm_kernels():
    from keras_tether.layers import ParallelDense

    layer = ParallelDense(3, branches=2)
    wrapper = Parametrized(layer, {"kernel": parametrize.UnitNorm(axis=1)})
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    wrapper(x)
    free = to_numpy(wrapper.free_weight("kernel")) * 2.0
    wrapper.free_weight("kernel").assign(free)
    kernel = free / np.linalg.norm(free, axis=1, keepdims=True)
    bias = to_numpy(layer.bias)
    expected = np.stack([x @ kernel[n] + bias[n] for n in range(2)], axis=1)
    np.testing.assert_allclose(to_numpy(wrapper(x)), expected, atol=1e-5)


def test_tie_to_a_parametrized_layer_survives_keras_file(tmp_path):
    inputs = keras.Input((6,))
    encoder = ReversibleDense(3, name="tied_encoder")
    wrapper = Parametrized(encoder, {"kernel": parametrize.Orthogonal()})
    model = keras.Model(inputs, wrapper(wrapper(inputs), reverse=True))
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    path = str(tmp_path / "tied.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    assert sum(isinstance(la, Parametrized) for la in loaded.layers) == 1
    assert len(loaded.trainable_weights) == 3


def test_pickle_and_deepcopy_keep_the_parametrization():
    import copy
    import pickle

    model, x = _saved_model()
    reference = model.predict(x, verbose=0)
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_allclose(copied.predict(x, verbose=0), reference, atol=1e-6)
        wrapper = next(la for la in copied.layers if isinstance(la, Parametrized))
        assert wrapper.layer is not model.layers[1].layer
        kernel = to_numpy(wrapper.parametrized_weight("kernel"))
        assert _orthonormal_error(kernel) < 1e-5


def test_weight_regularizer_penalises_the_parametrized_weight():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 6)).astype("float32")
    inputs = keras.Input((6,))
    orthogonal = Parametrized(
        keras.layers.Dense(4, kernel_regularizer=keras.regularizers.L2(0.1)),
        {"kernel": parametrize.Orthogonal()},
    )
    low_rank = Parametrized(
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L1(0.01)),
        {"kernel": parametrize.LowRank(2)},
    )
    model = keras.Model(inputs, low_rank(orthogonal(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, rng.normal(size=(16, 3)), epochs=2, verbose=0)
    # Scaling the free parameter leaves its Q factor, the weight, unchanged.
    free = orthogonal.free_weight("kernel")
    free.assign(3.0 * to_numpy(free))
    assert abs(0.1 * np.sum(to_numpy(free) ** 2) - 0.4) > 1.0
    factors = low_rank.free_weight("kernel")
    product = to_numpy(factors["left"]) @ to_numpy(factors["right"])
    # ||W||_F^2 of a 6 x 4 matrix with orthonormal columns is 4.
    expected = [0.4, 0.01 * np.abs(product).sum()]
    np.testing.assert_allclose(
        sorted(map(float, model.losses)), sorted(expected), rtol=1e-5
    )
    # The losses `fit` minimises include the penalty on the computed weight.
    evaluated = model.evaluate(x, np.zeros((16, 3)), verbose=0)
    plain = np.mean(to_numpy(model(x)) ** 2)
    np.testing.assert_allclose(evaluated, plain + sum(expected), rtol=1e-4)
    dense = orthogonal.remove()
    assert isinstance(dense.kernel.regularizer, keras.regularizers.L2)
    np.testing.assert_allclose(float(dense.losses[0]), 0.4, rtol=1e-5)


def test_weight_constraint_of_a_parametrized_weight_is_refused():
    dense = keras.layers.Dense(3, kernel_constraint=keras.constraints.NonNeg())
    wrapper = Parametrized(dense, {"kernel": parametrize.Positive()})
    with pytest.raises(ValueError, match="kernel_constraint=None"):
        wrapper.build((None, 4))
    # A constraint on another weight stays with it.
    dense = keras.layers.Dense(3, bias_constraint=keras.constraints.NonNeg())
    wrapper = Parametrized(dense, {"kernel": parametrize.Positive()})
    wrapper.build((None, 4))
    assert isinstance(dense.bias.constraint, keras.constraints.NonNeg)


@keras.saving.register_keras_serializable(package="keras_tether_tests")
class _Scaled(parametrize.Parametrization):
    def __init__(self, factor=2.0):
        super().__init__()
        self.factor = factor

    def __call__(self, free):
        return self.factor * keras.ops.tanh(free)

    def right_inverse(self, value):
        return keras.ops.arctanh(keras.ops.clip(value / self.factor, -0.99, 0.99))

    def get_config(self):
        return {"factor": self.factor}


def test_registered_user_parametrization_round_trips_with_safe_mode(tmp_path):
    inputs = keras.Input((4,))
    wrapper = Parametrized(keras.layers.Dense(3), {"kernel": _Scaled(0.5)})
    model = keras.Model(inputs, wrapper(inputs))
    x = np.random.default_rng(8).normal(size=(5, 4)).astype("float32")
    kernel = to_numpy(wrapper.parametrized_weight("kernel"))
    assert np.abs(kernel).max() < 0.5
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[1].parametrizations["kernel"].factor == 0.5
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_unregistered_or_unrebuildable_parametrizations_are_refused(tmp_path):
    class Unregistered(parametrize.Parametrization):
        def __call__(self, free):
            return free

        def right_inverse(self, value):
            return value

    class NoConfig(_Scaled):
        def get_config(self):
            return {"factor": self.factor, "extra": 1}

    with pytest.raises(TypeError, match="Parametrization"):
        Parametrized(keras.layers.Dense(3), {"kernel": lambda w: w})
    inputs = keras.Input((4,))
    model = keras.Model(
        inputs,
        Parametrized(keras.layers.Dense(3), {"kernel": Unregistered()})(inputs),
    )
    with pytest.raises(ValueError, match="`.*Unregistered` is not registered"):
        model.save(str(tmp_path / "model.keras"))
    with keras.saving.custom_object_scope({"Unregistered": Unregistered}):
        model.get_config()
    keras.saving.register_keras_serializable(package="keras_tether_tests")(NoConfig)
    with pytest.raises(ValueError, match="from_config.*extra"):
        parametrize.serialize(NoConfig())
