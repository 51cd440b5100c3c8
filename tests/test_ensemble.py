import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether.layers import Ensemble, ParallelDense, WeightedAverage
from keras_tether.layers._ensemble import vectorized_map

BRANCHES = 3


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _mlp(hidden=6, out=2, name=None):
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(out),
        ],
        name=name,
    )


def _numpy_mlp(x, kernels, biases):
    hidden = np.tanh(x @ kernels[0] + biases[0])
    return hidden @ kernels[1] + biases[1]


def _cnn():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _separate(models, x, **kwargs):
    return np.stack([_np(model(x, **kwargs)) for model in models], axis=1)


@keras.saving.register_keras_serializable(package="test_ensemble")
class ScaledSquareLoss(keras.layers.Layer):
    """A subclassed layer with a weight and an `add_loss` in `call`."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        outputs = inputs * self.scale
        self.add_loss(self.factor * keras.ops.sum(outputs**2))
        return outputs

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class Unregistered(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, inputs):
        return inputs @ self.kernel


# The vectorized map, the one backend-specific route.


def test_vectorized_map_draws_different_numbers_per_branch():
    dropout = keras.layers.Dropout(0.5)
    dropout.build((64,))
    (state,) = dropout.non_trainable_variables
    seeds = keras.ops.cast(np.array([[n, 1] for n in range(4)]), state.dtype)

    def draw(seed):
        with keras.StatelessScope([(state, seed)]):
            return dropout(keras.ops.ones((64,)), training=True)

    stacked = _np(vectorized_map(draw, seeds))
    assert stacked.shape == (4, 64)
    assert set(np.unique(stacked)) == {0.0, 2.0}
    assert len({row.tobytes() for row in stacked}) == 4


def test_vectorized_map_maps_nested_elements():
    x = np.arange(12.0, dtype="float32").reshape(3, 4)
    out = vectorized_map(lambda e: {"s": e[0] * 2, "t": [e[1] + 1]}, (x, x))
    np.testing.assert_allclose(_np(out["s"]), 2 * x)
    np.testing.assert_allclose(_np(out["t"][0]), x + 1)


# Each branch computes what a separate copy computes.


# Unrolled or vectorized, the branches compute the same numbers: the tests
# that check numbers run both ways on every backend.
UNROLL = pytest.mark.parametrize(
    "unroll", [False, True], ids=["vectorized", "unrolled"]
)


@UNROLL
def test_mlp_branches_equal_a_numpy_reference(unroll):
    ensemble = Ensemble(_mlp(), branches=BRANCHES, seed=0, unroll=unroll)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    y = _np(ensemble(x))
    assert y.shape == (5, BRANCHES, 2)
    k0, b0, k1, b1 = (_np(w) for w in ensemble.weights)
    assert k0.shape == (BRANCHES, 4, 6)
    for n in range(BRANCHES):
        expected = _numpy_mlp(x, [k0[n], k1[n]], [b0[n], b1[n]])
        np.testing.assert_allclose(y[:, n], expected, rtol=1e-5, atol=1e-6)


@UNROLL
def test_per_branch_inputs_slice_the_branch_axis(unroll):
    ensemble = Ensemble(
        keras.layers.Dense(3), branches=BRANCHES, per_branch_inputs=True, unroll=unroll
    )
    x = np.random.default_rng(1).normal(size=(2, BRANCHES, 4)).astype("float32")
    y = _np(ensemble(x))
    kernel, bias = (_np(w) for w in ensemble.weights)
    for n in range(BRANCHES):
        np.testing.assert_allclose(y[:, n], x[:, n] @ kernel[n] + bias[n], atol=1e-6)
    with pytest.raises(ValueError, match="per_branch_inputs"):
        Ensemble(keras.layers.Dense(3), branches=4, per_branch_inputs=True)(x)


@UNROLL
def test_cnn_with_batch_norm_equals_separate_models_and_keeps_own_statistics(unroll):
    models = [_cnn() for _ in range(BRANCHES)]
    ensemble = Ensemble.from_models(models, unroll=unroll)
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 1)).astype("float32")
    with warnings.catch_warnings():
        # Vectorized on every backend: no branch-by-branch fallback.
        warnings.filterwarnings("error", message=".*cannot batch")
        np.testing.assert_allclose(
            _np(ensemble(x, training=False)), _separate(models, x), atol=1e-5
        )
        trained = _np(ensemble(x, training=True))
    np.testing.assert_allclose(trained, _separate(models, x, training=True), atol=1e-5)
    # Every branch updated its own moving statistics, as each model did.
    moving_mean = [w for w in ensemble.weights if "moving_mean" in w.path][0]
    expected = np.stack([_np(m.layers[2].moving_mean) for m in models])
    assert not np.allclose(expected[0], 0.0)
    np.testing.assert_allclose(_np(moving_mean), expected, atol=1e-6)


def test_attention_and_nested_inputs_equal_separate_layers():
    x = np.random.default_rng(3).normal(size=(2, 5, 6)).astype("float32")

    def self_attention():
        inputs = keras.Input((5, 6))
        return keras.Model(
            inputs, keras.layers.MultiHeadAttention(2, 3)(inputs, inputs)
        )

    models = [self_attention() for _ in range(2)]
    ensemble = Ensemble.from_models(models)
    np.testing.assert_allclose(_np(ensemble(x)), _separate(models, x), atol=1e-5)

    layers = [keras.layers.Attention(use_scale=True) for _ in range(2)]
    for n, layer in enumerate(layers):
        layer([x, x])
        layer.scale.assign(float(n + 2))
    attention = Ensemble.from_models(layers)
    np.testing.assert_allclose(
        _np(attention([x, x])), _separate(layers, [x, x]), atol=1e-5
    )


def test_nested_outputs_keep_their_structure():
    inputs = keras.Input((4,))
    model = keras.Model(
        inputs, {"a": keras.layers.Dense(2)(inputs), "b": keras.layers.Dense(3)(inputs)}
    )
    ensemble = Ensemble(model, branches=BRANCHES)
    out = ensemble(np.ones((5, 4), "float32"))
    assert set(out) == {"a", "b"}
    assert tuple(out["a"].shape) == (5, BRANCHES, 2)
    assert tuple(out["b"].shape) == (5, BRANCHES, 3)
    symbolic = Ensemble(model, branches=BRANCHES)(keras.Input((4,)))
    assert tuple(symbolic["b"].shape) == (None, BRANCHES, 3)


def test_recurrent_layer_equals_separate_layers():
    x = np.random.default_rng(4).normal(size=(2, 5, 3)).astype("float32")
    layers = [keras.layers.GRU(4) for _ in range(2)]
    for layer in layers:
        layer(x)
    np.testing.assert_allclose(
        _np(Ensemble.from_models(layers)(x)), _separate(layers, x), atol=1e-5
    )


def test_library_layers_inside_a_branch_stay_exact():
    inputs = keras.Input((4,))
    branches = ParallelDense(3, branches=2)(inputs)
    model = keras.Model(inputs, WeightedAverage(branch_axis=1)(branches))
    models = [keras.models.clone_model(model) for _ in range(2)]
    x = np.random.default_rng(5).normal(size=(3, 4)).astype("float32")
    for m in models:
        m(x)
    np.testing.assert_allclose(
        _np(Ensemble.from_models(models)(x)), _separate(models, x), atol=1e-5
    )


def test_ensemble_of_dense_stack_equals_parallel_dense():
    models = [_mlp() for _ in range(4)]
    ensemble = Ensemble.from_models(models)
    x = np.random.default_rng(6).normal(size=(5, 4)).astype("float32")
    first = ParallelDense.from_layers([m.layers[0] for m in models])
    second = ParallelDense.from_layers(
        [m.layers[1] for m in models], per_branch_inputs=True
    )
    parallel = second(first(x))
    np.testing.assert_allclose(_np(ensemble(x)), _np(parallel), atol=1e-5)


# Each branch is drawn, and keeps its state, as a separate copy would.


def test_initialization_uses_the_fans_of_one_copy_and_the_seed():
    template = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64)])
    ensemble = Ensemble(template, branches=8, seed=5)
    ensemble.build((None, 32))
    stack = _np(ensemble.weights[0])
    # Glorot uniform with the fans of one (32, 64) kernel: limit sqrt(6/96);
    # the stack's fans (8 * 32 in) would give a limit under 0.15.
    limit = np.sqrt(6 / (32 + 64))
    assert np.abs(stack).max() <= limit
    assert np.abs(stack).max() > 0.95 * limit
    np.testing.assert_allclose(stack.std(axis=(1, 2)), limit / np.sqrt(3), rtol=0.1)
    assert len({branch.tobytes() for branch in stack}) == 8
    again = Ensemble(template, branches=8, seed=5)
    again.build((None, 32))
    np.testing.assert_array_equal(_np(again.weights[0]), stack)
    other = Ensemble(template, branches=8, seed=6)
    other.build((None, 32))
    assert not np.allclose(_np(other.weights[0]), stack)


def _matrix_products(ensemble, x):
    """The matrix products, batched or not, that one traced call computes."""
    ensemble(x)  # built eagerly, then traced
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        graph = tf.function(ensemble).get_concrete_function(x).graph
        return [op.type for op in graph.get_operations() if "MatMul" in op.type]
    import jax

    trainable = [v.value for v in ensemble.trainable_variables]
    non_trainable = [v.value for v in ensemble.non_trainable_variables]
    jaxpr = jax.make_jaxpr(lambda t, n, x: ensemble.stateless_call(t, n, x)[0])(
        trainable, non_trainable, x
    )
    return [
        str(eqn.params["dimension_numbers"][1])
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "dot_general"
    ]


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="torch is vectorized by default"
)
@pytest.mark.parametrize("branches", [3, 9])
def test_default_unrolls_without_an_accelerator(branches):
    x = keras.ops.convert_to_tensor(np.ones((2, 4), "float32"))
    on_cpu = all(d.startswith("cpu") for d in keras.distribution.list_devices())
    default = _matrix_products(Ensemble(_mlp(), branches=branches), x)
    vectorized = _matrix_products(Ensemble(_mlp(), branches=branches, unroll=False), x)
    unrolled = _matrix_products(Ensemble(_mlp(), branches=branches, unroll=True), x)
    # Unrolled: each branch its own two matrix products; vectorized: fewer,
    # at least one of them batched over the branches.
    assert len(unrolled) == 2 * branches
    assert len(vectorized) < 2 * branches
    tensorflow = keras.backend.backend() == "tensorflow"
    expected_unrolled = on_cpu and (tensorflow or branches <= 8)
    assert default == (unrolled if expected_unrolled else vectorized)


def test_unroll_is_kept_in_the_config():
    for unroll in (None, False, True):
        ensemble = Ensemble(_mlp(), branches=2, unroll=unroll)
        assert Ensemble.from_config(ensemble.get_config()).unroll is unroll


@UNROLL
def test_dropout_draws_a_different_mask_per_branch(unroll):
    dense = keras.layers.Dense(256, kernel_initializer="ones")
    template = keras.Sequential([keras.Input((1,)), dense, keras.layers.Dropout(0.5)])
    ensemble = Ensemble(template, branches=4, seed=1, unroll=unroll)
    x = np.ones((2, 1), "float32")
    inference = _np(ensemble(x))
    np.testing.assert_allclose(inference, np.ones_like(inference))
    trained = _np(ensemble(x, training=True))
    masks = trained > 0
    assert set(np.unique(trained)) <= {0.0, 2.0}
    assert len({masks[0, n].tobytes() for n in range(4)}) == 4
    # A new call draws new masks.
    assert not np.array_equal(masks, _np(ensemble(x, training=True)) > 0)


def test_gaussian_noise_differs_per_branch():
    template = keras.Sequential(
        [keras.layers.Dense(8), keras.layers.GaussianNoise(1.0)]
    )
    ensemble = Ensemble(template, branches=3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.vmap's fallback for seeded draws
        noisy = _np(ensemble(np.zeros((1, 4), "float32"), training=True))
    assert len({noisy[0, n].tobytes() for n in range(3)}) == 3


def test_losses_are_summed_over_branches():
    x = np.random.default_rng(7).normal(size=(2, 3)).astype("float32")
    layers = [ScaledSquareLoss(0.5) for _ in range(BRANCHES)]
    for n, layer in enumerate(layers):
        layer.build((None, 3))
        layer.scale.assign(np.full((3,), n + 1.0, "float32"))
    ensemble = Ensemble.from_models(layers)
    ensemble(x)
    expected = sum(0.5 * np.sum((x * (n + 1.0)) ** 2) for n in range(BRANCHES))
    np.testing.assert_allclose(
        sum(_np(loss) for loss in ensemble.losses), expected, rtol=1e-5
    )

    dense = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.1))
    dense.build((None, 3))
    reg = Ensemble(dense, branches=BRANCHES, seed=0)
    reg(x)
    kernel = _np(reg.weights[0])
    np.testing.assert_allclose(
        sum(_np(loss) for loss in reg.losses), 0.1 * np.sum(kernel**2), rtol=1e-5
    )
    activity = Ensemble(
        keras.layers.Dense(2, activity_regularizer=keras.regularizers.L1(0.2)),
        2,
        seed=0,
    )
    activity(x)
    # What a plain Dense with each branch's weights adds (Keras 3.14 and later
    # divide an activity loss by the batch size, 3.13 does not).
    expected = 0.0
    for n in range(2):
        plain = keras.layers.Dense(2, activity_regularizer=keras.regularizers.L1(0.2))
        plain.build((None, 3))
        plain.set_weights([_np(w)[n] for w in activity.weights])
        plain(x)
        expected += sum(_np(loss) for loss in plain.losses)
    np.testing.assert_allclose(
        sum(_np(loss) for loss in activity.losses), expected, rtol=1e-5
    )


def test_constraints_act_on_each_branch():
    dense = keras.layers.Dense(
        3, kernel_constraint=keras.constraints.MaxNorm(1.0, axis=0)
    )
    ensemble = Ensemble(dense, branches=2, seed=0)
    ensemble.build((None, 4))
    stack = np.random.default_rng(8).normal(size=(2, 4, 3)).astype("float32") * 5
    constrained = _np(
        ensemble.weights[0].constraint(keras.ops.convert_to_tensor(stack))
    )
    for n in range(2):
        np.testing.assert_allclose(
            constrained[n],
            _np(keras.constraints.MaxNorm(1.0, axis=0)(stack[n])),
            rtol=1e-5,
        )


# The way in and back.


def test_from_models_and_to_models_round_trip():
    models = [_mlp(name=f"member_{n}") for n in range(BRANCHES)]
    x = np.random.default_rng(9).normal(size=(5, 4)).astype("float32")
    ensemble = Ensemble.from_models(models, name="members")
    y = _np(ensemble(x))
    np.testing.assert_allclose(y, _separate(models, x), atol=1e-6)
    back = ensemble.to_models()
    assert len(back) == BRANCHES
    assert len({m.name for m in back}) == BRANCHES
    for n, model in enumerate(back):
        np.testing.assert_allclose(_np(model(x)), y[:, n], atol=1e-6)
        assert model is not models[n]
    # The split models are independent of the ensemble.
    back[0].layers[0].kernel.assign(np.zeros((4, 6), "float32"))
    np.testing.assert_allclose(_np(ensemble(x)), y, atol=1e-6)


def test_from_models_refuses_unlike_models():
    with pytest.raises(ValueError, match="models"):
        Ensemble.from_models([])
    with pytest.raises(TypeError, match=r"models\[1\]"):
        Ensemble.from_models([_mlp(), "not a model"])
    with pytest.raises(ValueError, match=r"models\[1\]"):
        Ensemble.from_models([_mlp(), _mlp(hidden=7)])
    with pytest.raises(ValueError, match="not built"):
        Ensemble.from_models([keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="branches"):
        Ensemble.from_models([_mlp()], branches=2)


# Constructor arguments and templates that cannot be ensembled.


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"layer": "dense", "branches": 2}, TypeError, "layer='dense'"),
        ({"branches": 0}, ValueError, "branches=0"),
        ({"branches": 2.0}, TypeError, "branches=2.0"),
        ({"branches": True}, TypeError, "branches=True"),
        ({"branches": 2, "per_branch_inputs": 1}, TypeError, "per_branch_inputs=1"),
        ({"branches": 2, "seed": "1"}, TypeError, "seed='1'"),
        ({"branches": 2, "unroll": "auto"}, TypeError, "unroll='auto'"),
        ({"branches": 2, "unroll": 1}, TypeError, "unroll=1"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, text):
    kwargs = {"layer": keras.layers.Dense(2), **kwargs}
    with pytest.raises(error, match=text):
        Ensemble(**kwargs)


def test_unrebuildable_and_unvectorizable_templates_are_refused():
    class NoConfig(keras.layers.Layer):
        def __init__(self, units):
            super().__init__()
            self.units = units

    with pytest.raises(ValueError, match="get_config"):
        Ensemble(NoConfig(3), branches=2)
    with pytest.raises(ValueError, match="no variables"):
        Ensemble(keras.layers.ReLU(), branches=2)(np.ones((1, 2), "float32"))

    @keras.saving.register_keras_serializable(package="test_ensemble")
    class ValueBranching(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(), initializer="ones")

        def call(self, inputs):
            # Python needs the value: fine eagerly, impossible in a vmap.
            total = float(keras.ops.convert_to_numpy(keras.ops.sum(inputs * self.w)))
            return inputs * total

        def compute_output_spec(self, inputs):
            return keras.KerasTensor(inputs.shape, inputs.dtype)

    layer = ValueBranching()
    np.testing.assert_allclose(_np(layer(np.ones((1, 2), "float32"))), [[2.0, 2.0]])

    if keras.backend.backend() != "tensorflow":
        # TensorFlow's vectorized map runs what it cannot batch in a loop.
        with pytest.raises(ValueError, match="value_branching.*in one call"):
            Ensemble(ValueBranching(), branches=2, unroll=False)(
                np.ones((1, 2), "float32")
            )


# Everything Keras.


def test_conformance():
    run_layer_test(
        Ensemble,
        np.random.default_rng(10).normal(size=(4, 4)).astype("float32"),
        init_kwargs={"layer": _mlp(), "branches": BRANCHES, "seed": 3},
        expected_output_shape=(4, BRANCHES, 2),
        expected_num_trainable_weights=4,
        atol=1e-6,
        # The template keeps the dtype policy it was made with; the mixed
        # precision test below makes it under a mixed policy.
        run_mixed_precision_check=False,
    )


def test_count_params_and_summary():
    template = _cnn()
    ensemble = Ensemble(template, branches=4)
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, ensemble(inputs))
    assert ensemble.count_params() == 4 * template.count_params()
    assert model.count_params() == 4 * template.count_params()
    lines = []
    model.summary(print_fn=lines.append)
    assert "Ensemble" in "".join(lines)


def test_freezing_stops_training_and_batch_norm_updates():
    models = [_cnn() for _ in range(2)]
    ensemble = Ensemble.from_models(models)
    x = np.random.default_rng(11).normal(size=(4, 6, 6, 1)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ensemble(x)
    ensemble.trainable = False
    assert ensemble.trainable_weights == []
    before = [_np(w) for w in ensemble.weights]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = _np(ensemble(x, training=True))
    # Like a frozen Keras model, the batch norm runs in inference mode.
    np.testing.assert_allclose(frozen, _separate(models, x, training=False), atol=1e-5)
    for old, new in zip(before, ensemble.weights, strict=True):
        np.testing.assert_array_equal(old, _np(new))
    ensemble.trainable = True
    assert len(ensemble.trainable_weights) == 6


def _stacked_separate_model(models):
    inputs = keras.Input((4,))
    outputs = keras.ops.stack([m(inputs) for m in models], axis=1)
    return keras.Model(inputs, outputs)


@UNROLL
@pytest.mark.parametrize("jit_compile", [False, True])
def test_training_equals_separate_models(jit_compile, unroll):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("torch's jit_compile (torch.compile) is slow to start")
    rng = np.random.default_rng(12)
    x = rng.normal(size=(8, 4)).astype("float32")
    target = rng.normal(size=(8, BRANCHES, 2)).astype("float32")
    separate = [_mlp() for _ in range(BRANCHES)]
    ensemble = Ensemble.from_models(separate, unroll=unroll)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, ensemble(inputs))
    reference = _stacked_separate_model(separate)
    for m in (model, reference):
        m.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile)
        m.fit(x, target, batch_size=4, epochs=1, verbose=0, shuffle=False)
    stacked = [np.stack([_np(m.weights[i]) for m in separate]) for i in range(4)]
    for mine, theirs in zip(ensemble.weights, stacked, strict=True):
        np.testing.assert_allclose(_np(mine), theirs, atol=1e-5)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5
    )


def test_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    ensemble = Ensemble(_mlp(), branches=2, seed=0)
    y = ensemble(np.ones((2, 4), "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert all(w.dtype == "float32" for w in ensemble.weights)
    keras.config.set_dtype_policy("float32")
    models = ensemble.to_models()
    assert models[0].layers[0].compute_dtype == "float16"


def test_save_weights_and_load_weights(tmp_path):
    x = np.random.default_rng(13).normal(size=(3, 4)).astype("float32")

    def model(seed):
        inputs = keras.Input((4,))
        return keras.Model(
            inputs, Ensemble(_mlp(), branches=BRANCHES, seed=seed)(inputs)
        )

    first = model(1)
    y = _np(first(x))
    path = str(tmp_path / "ensemble.weights.h5")
    first.save_weights(path)
    other = model(2)
    assert not np.allclose(_np(other(x)), y)
    other.load_weights(path)
    np.testing.assert_allclose(_np(other(x)), y, atol=1e-6)


def test_keras_file_reloads_in_a_fresh_process(tmp_path):
    x = np.random.default_rng(14).normal(size=(4, 6, 6, 1)).astype("float32")
    inputs = keras.Input((6, 6, 1))
    outputs = Ensemble(_cnn(), branches=2, seed=4, name="dense")(inputs)
    # A reused layer name: the ensemble is called "dense" beside real Dense.
    outputs = keras.layers.Flatten()(outputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense_1")(outputs))
    model.compile("adam", "mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, np.ones((4, 1)), epochs=1, verbose=0)
        expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(
        f"""
        import warnings
        import keras, numpy as np
        import keras_tether
        warnings.simplefilter("ignore")
        model = keras.models.load_model({str(path)!r}, safe_mode=True)
        x = np.load({str(tmp_path / "x.npy")!r})
        got = model.predict(x, verbose=0)
        np.testing.assert_allclose(
            got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
        ensemble = model.get_layer("dense")
        assert isinstance(ensemble, keras_tether.layers.Ensemble)
        assert len(ensemble.to_models()) == 2
        print("reloaded")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert "reloaded" in result.stdout, result.stderr[-3000:]


def test_digits_example_runs():
    pytest.importorskip("sklearn")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    try:
        import ensemble_digits
    finally:
        sys.path.pop(0)
    results = ensemble_digits.main(epochs=1, members=2, samples=64)
    assert results["reloaded_equal"]
    assert len(results["members"]) == 2


def test_docs_page_runs():
    page = os.path.join(os.path.dirname(__file__), "..", "docs", "ensembles.md")
    with open(page) as file:
        text = file.read()
    blocks = [block.split("```")[0] for block in text.split("```python\n")[1:]]
    assert len(blocks) == 4
    namespace = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/ensembles.md block {index}", "exec"), namespace)
    assert namespace["unrolled"].unroll is True
