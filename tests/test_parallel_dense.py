import math
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from layer_conformance import run_layer_test

from keras_tether.layers import ParallelDense

INPUT_DIM, UNITS, BRANCHES = 48, 32, 8
# Standard deviation of a normal truncated at two standard deviations,
# relative to the untruncated one.
TRUNCATED_STD_FACTOR = 0.87962566103423978

_uid = iter(range(10**6))


def _name(prefix):
    return f"{prefix}_{next(_uid)}"


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _kernel(initializer, branches=BRANCHES):
    layer = ParallelDense(UNITS, branches, kernel_initializer=initializer)
    layer.build((None, INPUT_DIM))
    return _np(layer.kernel)


def _dense_kernel(initializer):
    dense = keras.layers.Dense(UNITS, kernel_initializer=initializer)
    dense.build((None, INPUT_DIM))
    return _np(dense.kernel)


FAN_IN, FAN_OUT = INPUT_DIM, UNITS
FAN_AVG = (FAN_IN + FAN_OUT) / 2
# Expected standard deviation of one branch, worked out from each
# initializer's definition with the fans of one (48, 32) kernel.
EXPECTED_STD = {
    "glorot_uniform": math.sqrt(1 / FAN_AVG),
    "glorot_normal": math.sqrt(1 / FAN_AVG),
    "he_uniform": math.sqrt(2 / FAN_IN),
    "he_normal": math.sqrt(2 / FAN_IN),
    "lecun_uniform": math.sqrt(1 / FAN_IN),
    "lecun_normal": math.sqrt(1 / FAN_IN),
    "variance_scaling_fan_out_uniform": math.sqrt(3 / FAN_OUT),
    "variance_scaling_fan_avg_untruncated": math.sqrt(0.5 / FAN_AVG),
    "variance_scaling_fan_in_truncated": math.sqrt(2 / FAN_IN),
    "random_normal": 0.3,
    "random_uniform": 0.5 / math.sqrt(3),
    "truncated_normal": 0.3 * TRUNCATED_STD_FACTOR,
}


def _initializer(key):
    if key == "variance_scaling_fan_out_uniform":
        return keras.initializers.VarianceScaling(3.0, "fan_out", "uniform")
    if key == "variance_scaling_fan_avg_untruncated":
        return keras.initializers.VarianceScaling(0.5, "fan_avg", "untruncated_normal")
    if key == "variance_scaling_fan_in_truncated":
        return keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal")
    if key == "random_normal":
        return keras.initializers.RandomNormal(stddev=0.3)
    if key == "random_uniform":
        return keras.initializers.RandomUniform(-0.5, 0.5)
    if key == "truncated_normal":
        return keras.initializers.TruncatedNormal(stddev=0.3)
    return key


@pytest.mark.parametrize("key", sorted(EXPECTED_STD))
def test_each_branch_has_the_std_of_a_separate_dense(key):
    kernel = _kernel(_initializer(key))
    dense_std = np.std(_dense_kernel(_initializer(key)))
    expected = EXPECTED_STD[key]
    assert abs(dense_std - expected) < 0.05 * expected  # the reference itself
    for branch in range(BRANCHES):
        std = np.std(kernel[branch])
        assert abs(std - expected) < 0.05 * expected, (branch, std, expected)
        assert abs(np.mean(kernel[branch])) < 0.1 * expected
    # Branches are independent draws, not copies of one.
    correlation = np.corrcoef(kernel[0].ravel(), kernel[1].ravel())[0, 1]
    assert abs(correlation) < 0.1


def test_the_stacked_glorot_of_einsum_dense_would_be_too_small():
    # The bug this layer avoids: fans of the whole stack, std / sqrt(N)-ish.
    stacked = keras.initializers.GlorotUniform()((BRANCHES, INPUT_DIM, UNITS))
    ours = _kernel("glorot_uniform")
    assert np.std(_np(stacked)) < 0.5 * np.std(ours)


@pytest.mark.parametrize("shape", [(32, 32), (48, 32), (32, 48)])
def test_orthogonal_makes_every_branch_orthogonal(shape):
    input_dim, units = shape
    layer = ParallelDense(
        units, 4, kernel_initializer=keras.initializers.Orthogonal(gain=2.0)
    )
    layer.build((None, input_dim))
    kernel = _np(layer.kernel).astype("float64")
    size = min(shape)
    for branch in kernel:
        gram = branch.T @ branch if input_dim >= units else branch @ branch.T
        np.testing.assert_allclose(gram, 4.0 * np.eye(size), atol=1e-4)
    assert not np.allclose(kernel[0], kernel[1])


def test_constant_identity_and_callable_initializers_act_per_branch():
    def ramp(shape, dtype=None):
        return keras.ops.reshape(
            keras.ops.arange(math.prod(shape), dtype=dtype or "float32"), shape
        )

    layer = ParallelDense(
        3, 2, kernel_initializer=ramp, bias_initializer=keras.initializers.Constant(7)
    )
    layer.build((None, 4))
    expected = np.arange(12, dtype="float32").reshape(4, 3)
    np.testing.assert_array_equal(_np(layer.kernel), np.stack([expected] * 2))
    np.testing.assert_array_equal(_np(layer.bias), np.full((2, 3), 7.0))
    identity = ParallelDense(3, 2, kernel_initializer="identity")
    identity.build((None, 3))
    np.testing.assert_array_equal(_np(identity.kernel), np.stack([np.eye(3)] * 2))


def test_a_seeded_layer_is_reproducible_and_its_branches_differ():
    first = _kernel(keras.initializers.GlorotUniform(seed=3))
    second = _kernel(keras.initializers.GlorotUniform(seed=3))
    other = _kernel(keras.initializers.GlorotUniform(seed=4))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    for i in range(BRANCHES):
        for j in range(i + 1, BRANCHES):
            assert not np.allclose(first[i], first[j])


def test_global_seed_reproduces_unseeded_layers_and_seed_generators_work():
    keras.utils.set_random_seed(5)
    first = _kernel("he_normal")
    keras.utils.set_random_seed(5)
    np.testing.assert_array_equal(first, _kernel("he_normal"))
    generator = keras.random.SeedGenerator(11)
    kernel = _kernel(keras.initializers.HeNormal(seed=generator))
    assert not np.allclose(kernel[0], kernel[1])


@pytest.mark.parametrize("middle", [(), (5,), (2, 3)])
def test_shared_input_matches_numpy(middle):
    rng = np.random.default_rng(0)
    layer = ParallelDense(4, 3, activation="tanh", bias_initializer="random_normal")
    x = rng.normal(size=(2, *middle, 6)).astype("float32")
    y = _np(layer(x))
    kernel, bias = _np(layer.kernel), _np(layer.bias)
    expected = np.stack([np.tanh(x @ kernel[n] + bias[n]) for n in range(3)], axis=1)
    assert y.shape == (2, 3, *middle, 4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, *middle, 6)) == (None, 3, *middle, 4)


# A few small branches on (batch, branches, features) take the block-diagonal
# product; more branches, larger kernels or middle axes the branch-major one.
@pytest.mark.parametrize(
    "branches,middle,units,block_diagonal",
    [
        (3, (), 4, True),
        (1, (), 4, True),
        (3, (5,), 4, False),
        (3, (2, 3), 4, False),
        (5, (), 4, False),
        (4, (), 3000, False),
    ],
)
def test_per_branch_inputs_match_numpy(branches, middle, units, block_diagonal):
    from keras_tether.layers._parallel_dense import _as_block_diagonal

    rng = np.random.default_rng(1)
    layer = ParallelDense(
        units, branches, per_branch_inputs=True, bias_initializer="random_normal"
    )
    x = rng.normal(size=(2, branches, *middle, 6)).astype("float32")
    layer.build(x.shape)
    assert _as_block_diagonal(x, layer.kernel) is block_diagonal
    y = _np(layer(x))
    kernel, bias = _np(layer.kernel), _np(layer.bias)
    expected = np.stack(
        [x[:, n] @ kernel[n] + bias[n] for n in range(branches)], axis=1
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _np_softmax(z):
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _doubled_plus_first_unit(z):
    # Not elementwise: mixes each branch's units, like a softmax does.
    return 2.0 * z + z[..., :1]


# Each branch's activation sees that branch's units only, whichever product
# computes the layer: elementwise activations are applied to the flat
# product, others after the branch axis is split off.
@pytest.mark.parametrize(
    "activation,reference",
    [
        ("relu", lambda z: np.maximum(z, 0.0)),
        ("gelu", None),
        ("softmax", _np_softmax),
        ("log_softmax", lambda z: np.log(_np_softmax(z))),
        (_doubled_plus_first_unit, _doubled_plus_first_unit),
    ],
)
@pytest.mark.parametrize(
    "per_branch_inputs,branches", [(False, 3), (True, 3), (True, 6)]
)
def test_activation_is_applied_per_branch(
    activation, reference, per_branch_inputs, branches
):
    if reference is None:
        erf = np.vectorize(math.erf)

        def reference(z):
            return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))

    rng = np.random.default_rng(2)
    layer = ParallelDense(
        5,
        branches,
        activation=activation,
        per_branch_inputs=per_branch_inputs,
        bias_initializer="random_normal",
    )
    shape = (4, branches, 6) if per_branch_inputs else (4, 6)
    x = rng.normal(size=shape).astype("float32")
    y = _np(layer(x))
    kernel, bias = _np(layer.kernel), _np(layer.bias).astype("float64")
    slices = [x[:, n] if per_branch_inputs else x for n in range(branches)]
    expected = np.stack(
        [reference(slices[n] @ kernel[n] + bias[n]) for n in range(branches)],
        axis=1,
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_side_by_side_kernel_matches_numpy():
    from keras_tether.layers._parallel_dense import _side_by_side

    kernel = np.random.default_rng(3).normal(size=(4, 6, 5)).astype("float32")
    expected = np.concatenate(list(kernel), axis=1)
    assert expected.shape == (6, 20)
    np.testing.assert_array_equal(_np(_side_by_side(keras.ops.array(kernel))), expected)


def _built_denses(count=3, input_dim=6, units=4, **kwargs):
    layers = []
    for _ in range(count):
        dense = keras.layers.Dense(units, bias_initializer="random_normal", **kwargs)
        dense.build((None, input_dim))
        layers.append(dense)
    return layers


def test_from_layers_and_to_layers_copy_weights_exactly():
    rng = np.random.default_rng(2)
    denses = _built_denses(activation="relu")
    x = rng.normal(size=(5, 6)).astype("float32")
    stacked = ParallelDense.from_layers(denses)
    assert stacked.branches == 3 and stacked.units == 4
    for n, dense in enumerate(denses):
        np.testing.assert_array_equal(_np(stacked.kernel[n]), _np(dense.kernel))
        np.testing.assert_array_equal(_np(stacked.bias[n]), _np(dense.bias))
        np.testing.assert_allclose(
            _np(stacked(x)[:, n]), _np(dense(x)), rtol=1e-6, atol=1e-6
        )
    split = stacked.to_layers()
    assert [type(d) for d in split] == [keras.layers.Dense] * 3
    for n, dense in enumerate(split):
        np.testing.assert_array_equal(_np(dense.kernel), _np(denses[n].kernel))
        np.testing.assert_array_equal(_np(dense.bias), _np(denses[n].bias))
        assert dense.get_config()["activation"] == "relu"


def test_per_branch_from_layers_feeds_each_dense_its_slice():
    rng = np.random.default_rng(3)
    denses = _built_denses(use_bias=False)
    stacked = ParallelDense.from_layers(denses, per_branch_inputs=True)
    assert stacked.bias is None
    x = rng.normal(size=(5, 3, 6)).astype("float32")
    y = _np(stacked(x))
    for n, dense in enumerate(denses):
        np.testing.assert_allclose(y[:, n], _np(dense(x[:, n])), atol=1e-6)


def test_from_layers_refuses_layers_that_cannot_stack():
    with pytest.raises(TypeError, match="non-empty list"):
        ParallelDense.from_layers([])
    with pytest.raises(TypeError, match=r"layers\[1\] of type Conv1D"):
        ParallelDense.from_layers(_built_denses(1) + [keras.layers.Conv1D(2, 1)])
    with pytest.raises(ValueError, match="not built"):
        ParallelDense.from_layers([keras.layers.Dense(3)])
    mixed = _built_denses(1) + _built_denses(1, activation="relu")
    with pytest.raises(ValueError, match="`activation` differs"):
        ParallelDense.from_layers(mixed)
    with pytest.raises(ValueError, match="`units` differs"):
        ParallelDense.from_layers(_built_denses(1) + _built_denses(1, units=5))
    with pytest.raises(ValueError, match="one input size"):
        ParallelDense.from_layers(_built_denses(1) + _built_denses(1, input_dim=7))


def test_a_trained_stacked_model_equals_separate_denses_trained_alike():
    # Same initial weights, same data, same optimizer: the two forms stay equal.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 6)).astype("float32")
    target = rng.normal(size=(32, 1)).astype("float32")
    hidden = _built_denses(count=4, units=5, activation="tanh")
    heads = _built_denses(count=4, input_dim=5, units=1)

    inputs = keras.Input((6,))
    branches = [head(dense(inputs)) for dense, head in zip(hidden, heads, strict=True)]
    separate = keras.Model(inputs, keras.layers.Average()(branches))

    first = ParallelDense.from_layers(hidden, name=_name("hidden"))
    second = ParallelDense.from_layers(heads, per_branch_inputs=True)
    stacked_inputs = keras.Input((6,))
    stacked_outputs = second(first(stacked_inputs))
    mean = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=1))(stacked_outputs)
    stacked = keras.Model(stacked_inputs, mean)

    for model in (separate, stacked):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, target, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for n in range(4):
        np.testing.assert_allclose(
            _np(first.kernel[n]), _np(hidden[n].kernel), atol=1e-5
        )
        np.testing.assert_allclose(_np(second.bias[n]), _np(heads[n].bias), atol=1e-5)


def test_regularizers_and_constraints_act_per_branch():
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(3, 6, 4)).astype("float32")
    layer = ParallelDense(
        4,
        3,
        kernel_regularizer=keras.regularizers.L2(0.1),
        bias_regularizer=keras.regularizers.L1(0.2),
        kernel_constraint=keras.constraints.MaxNorm(1.0, axis=0),
    )
    layer.build((None, 6))
    layer.kernel.assign(kernel)
    layer.bias.assign(np.ones((3, 4), dtype="float32"))
    penalties = sorted(float(_np(loss)) for loss in layer.losses)
    np.testing.assert_allclose(
        penalties, sorted([0.1 * np.sum(kernel**2), 0.2 * 12]), rtol=1e-5
    )
    constrained = _np(layer.kernel.constraint(layer.kernel))
    norms = np.sqrt(np.sum(kernel**2, axis=1, keepdims=True))  # per branch column
    np.testing.assert_allclose(
        constrained, kernel * np.minimum(1.0, norms) / (norms + 1e-7), rtol=1e-4
    )


def test_a_structured_regularizer_sees_one_branch_at_a_time():
    # Orthogonal branches that are copies of each other: each branch alone
    # has zero orthogonality penalty, the flattened stack would not.
    q = np.linalg.qr(np.random.default_rng(6).normal(size=(6, 6)))[0].astype("float32")
    layer = ParallelDense(
        6,
        2,
        kernel_regularizer=keras.regularizers.OrthogonalRegularizer(1.0, mode="rows"),
    )
    layer.build((None, 6))
    layer.kernel.assign(np.stack([q, q]))
    assert abs(float(_np(layer.losses[0]))) < 1e-4


def test_masks_are_passed_to_every_branch():
    tokens = np.array([[1, 2, 0, 0], [3, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(5, 6, mask_zero=True)(inputs)
    layer = ParallelDense(3, 2)
    outputs = layer(embedded)
    second = ParallelDense(3, 2, per_branch_inputs=True)
    mask_model = keras.Model(inputs, second.compute_mask(outputs, outputs._keras_mask))
    expected = np.broadcast_to((tokens != 0)[:, None, :], (2, 2, 4))
    np.testing.assert_array_equal(_np(mask_model(tokens)), expected)
    mask = layer.compute_mask(None, keras.ops.convert_to_tensor(tokens != 0))
    np.testing.assert_array_equal(_np(mask), expected)


def test_bad_arguments_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match=r"Received: units=0"):
        ParallelDense(0, 2)
    with pytest.raises(TypeError, match="`units`"):
        ParallelDense(3.0, 2)
    with pytest.raises(ValueError, match=r"Received: branches=-1"):
        ParallelDense(3, -1)
    with pytest.raises(TypeError, match="`branches`"):
        ParallelDense(3, True)
    with pytest.raises(TypeError, match="`use_bias`"):
        ParallelDense(3, 2, use_bias=1)
    with pytest.raises(TypeError, match="`per_branch_inputs`"):
        ParallelDense(3, 2, per_branch_inputs="yes")
    with pytest.raises(ValueError, match="`lora_rank`"):
        ParallelDense(3, 2, lora_rank=0)


def test_inputs_whose_branch_axis_does_not_match_are_refused():
    layer = ParallelDense(3, 4, per_branch_inputs=True)
    with pytest.raises(ValueError, match=r"\(batch_size, 4, \.\.\., input_dim\)"):
        layer(keras.Input((3, 8)))
    layer(np.zeros((2, 4, 8), dtype="float32"))
    with pytest.raises(ValueError, match=r"Received: `inputs` of shape \(2, 5, 8\)"):
        layer(np.zeros((2, 5, 8), dtype="float32"))
    with pytest.raises(ValueError, match="expects `inputs`"):
        ParallelDense(3, 4, per_branch_inputs=True)(np.zeros((2, 8), "float32"))
    with pytest.raises(ValueError, match=r"\(batch_size, \.\.\., input_dim\)"):
        ParallelDense(3, 4)(np.zeros((8,), "float32"))
    with pytest.raises(
        ValueError,
        match=r"built for 8 input features.*Received: `inputs` of shape \(2, 4, 7\)",
    ):
        layer(np.zeros((2, 4, 7), dtype="float32"))


def test_lora_learns_a_low_rank_update_per_branch():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 6)).astype("float32")
    layer = ParallelDense(4, 3, name=_name("lora"))
    model = keras.Sequential([keras.Input((6,)), layer])
    before = _np(model(x))
    kernel = _np(layer.kernel)
    layer.enable_lora(2, lora_alpha=4)
    assert tuple(layer.lora_kernel_a.shape) == (3, 6, 2)
    assert tuple(layer.lora_kernel_b.shape) == (3, 2, 4)
    np.testing.assert_allclose(_np(model(x)), before, atol=1e-6)
    assert len(layer.trainable_weights) == 3  # bias, a, b
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, rng.normal(size=(16, 3, 4)), epochs=2, verbose=0)
    np.testing.assert_array_equal(_np(layer._kernel), kernel)  # frozen
    a, b = _np(layer.lora_kernel_a), _np(layer.lora_kernel_b)
    effective = kernel + 2.0 * np.einsum("nir,nro->nio", a, b)
    np.testing.assert_allclose(_np(layer.kernel), effective, rtol=1e-5, atol=1e-6)
    for n in range(3):
        assert np.linalg.matrix_rank(effective[n] - kernel[n], tol=1e-5) <= 2
    with pytest.raises(ValueError, match="already enabled"):
        layer.enable_lora(2)
    split = layer.to_layers()
    np.testing.assert_allclose(_np(split[1].kernel), effective[1], atol=1e-6)


def test_a_lora_model_saves_and_loads_exactly(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 6)).astype("float32")
    layer = ParallelDense(4, 3, lora_rank=2, name=_name("lora_saved"))
    model = keras.Sequential([keras.Input((6,)), layer])
    layer.lora_kernel_b.assign(rng.normal(size=(3, 2, 4)).astype("float32"))
    path = str(tmp_path / "lora.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))
    assert loaded.layers[0].lora_enabled


def test_lora_is_refused_with_a_kernel_constraint_and_before_build():
    with pytest.raises(ValueError, match="before it is built"):
        ParallelDense(3, 2).enable_lora(2)
    layer = ParallelDense(3, 2, kernel_constraint="non_neg")
    layer.build((None, 4))
    with pytest.raises(ValueError, match="kernel_constraint"):
        layer.enable_lora(2)


def test_quantization_is_refused_clearly():
    layer = ParallelDense(3, 2, name=_name("quantized"))
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2)])
    with pytest.raises(NotImplementedError, match="to_layers"):
        layer.quantize("int8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize("int8")
    # Keras warns that the layer was skipped: before 3.16 with the layer's own
    # message, from 3.16 in one summary that names each skipped layer.
    assert any(layer.name in str(w.message) for w in caught)
    assert model.layers[1].quantization_mode == "int8"
    assert layer.quantization_mode is None
    with pytest.raises(ValueError, match="quantization"):
        ParallelDense(3, 2, dtype="int8_from_float32")
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    dense.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        ParallelDense.from_layers([dense])


def test_conformance_shared_inputs():
    run_layer_test(
        ParallelDense,
        np.random.default_rng(9).normal(size=(4, 5, 6)).astype("float32"),
        init_kwargs={"units": 3, "branches": 2, "activation": "relu"},
        expected_output_shape=(4, 2, 5, 3),
        expected_num_trainable_weights=2,
    )


def test_conformance_per_branch_inputs_without_bias():
    run_layer_test(
        ParallelDense,
        np.random.default_rng(10).normal(size=(4, 3, 6)).astype("float32"),
        init_kwargs={
            "units": 2,
            "branches": 3,
            "use_bias": False,
            "per_branch_inputs": True,
            "kernel_regularizer": "l2",
        },
        expected_output_shape=(4, 3, 2),
        expected_num_trainable_weights=1,
    )


def test_save_weights_and_a_fresh_process_reload(tmp_path):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 6)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            ParallelDense(5, 4, activation="gelu", name=_name("first")),
            ParallelDense(2, 4, per_branch_inputs=True, name=_name("second")),
        ]
    )
    weights = str(tmp_path / "model.weights.h5")
    model.save_weights(weights)
    twin = keras.models.clone_model(model)
    twin.load_weights(weights)
    np.testing.assert_array_equal(_np(twin(x)), _np(model(x)))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _np(model(x)))
    script = (
        "import keras, numpy as np, keras_tether\n"
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "np.testing.assert_array_equal(keras.ops.convert_to_numpy(m(x)), y)\n"
        "print('reloaded', type(m.layers[0]).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reloaded ParallelDense" in result.stdout


# LoRA saving: the contract of Keras' `Dense`, checked against `Dense` itself.

LORA_INPUT, LORA_UNITS, LORA_BRANCHES, LORA_RANK, LORA_ALPHA = 6, 4, 3, 2, 3.0


def _fine_tuned_factors(seed):
    """A frozen kernel, a bias and LoRA factors as fine-tuning leaves them."""
    rng = np.random.default_rng(seed)
    shape = (LORA_BRANCHES, LORA_INPUT, LORA_UNITS)
    return {
        "kernel": rng.normal(size=shape).astype("float32"),
        "bias": rng.normal(size=(LORA_BRANCHES, LORA_UNITS)).astype("float32"),
        "a": rng.normal(size=shape[:2] + (LORA_RANK,)).astype("float32"),
        "b": rng.normal(size=(LORA_BRANCHES, LORA_RANK, LORA_UNITS)).astype("float32"),
    }


def _numpy_merged_kernel(factors):
    scale = LORA_ALPHA / LORA_RANK
    return np.stack(
        [
            factors["kernel"][n] + scale * factors["a"][n] @ factors["b"][n]
            for n in range(LORA_BRANCHES)
        ]
    )


def _lora_parallel_model(factors, name):
    layer = ParallelDense(
        LORA_UNITS,
        LORA_BRANCHES,
        lora_rank=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        name=_name(name),
    )
    model = keras.Sequential([keras.Input((LORA_INPUT,)), layer])
    layer._kernel.assign(factors["kernel"])
    layer.bias.assign(factors["bias"])
    layer.lora_kernel_a.assign(factors["a"])
    layer.lora_kernel_b.assign(factors["b"])
    return model, layer


def _lora_dense_models(factors):
    """The peer: one Keras `Dense` with LoRA per branch, same factors."""
    models = []
    for n in range(LORA_BRANCHES):
        dense = keras.layers.Dense(LORA_UNITS, name=_name("peer"))
        model = keras.Sequential([keras.Input((LORA_INPUT,)), dense])
        dense.enable_lora(LORA_RANK, lora_alpha=LORA_ALPHA)
        dense._kernel.assign(factors["kernel"][n])
        dense.bias.assign(factors["bias"][n])
        dense.lora_kernel_a.assign(factors["a"][n])
        dense.lora_kernel_b.assign(factors["b"][n])
        models.append(model)
    return models


def test_lora_saves_the_merged_kernel_and_no_factors(tmp_path):
    factors = _fine_tuned_factors(21)
    model, _ = _lora_parallel_model(factors, "lora_merge")
    path = str(tmp_path / "lora.weights.h5")
    model.save_weights(path)
    # The file holds a plain kernel and bias: a layer without LoRA loads it.
    plain = ParallelDense(LORA_UNITS, LORA_BRANCHES, name=_name("plain"))
    plain_model = keras.Sequential([keras.Input((LORA_INPUT,)), plain])
    plain_model.load_weights(path)
    merged = _numpy_merged_kernel(factors)
    np.testing.assert_allclose(_np(plain.kernel), merged, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_np(plain.bias), factors["bias"])
    x = np.random.default_rng(22).normal(size=(5, LORA_INPUT)).astype("float32")
    expected = np.einsum("bi,nio->bno", x, merged) + factors["bias"]
    np.testing.assert_allclose(_np(plain_model(x)), expected, rtol=1e-5, atol=1e-5)


def test_lora_layer_loads_the_merged_kernel_and_zero_factors(tmp_path):
    factors = _fine_tuned_factors(23)
    model, _ = _lora_parallel_model(factors, "lora_weights")
    x = np.random.default_rng(24).normal(size=(5, LORA_INPUT)).astype("float32")
    path = str(tmp_path / "lora.weights.h5")
    model.save_weights(path)
    twin, twin_layer = _lora_parallel_model(_fine_tuned_factors(25), "lora_twin")
    twin.load_weights(path)
    assert twin_layer.lora_enabled
    # `b` restarts from zero; `a` keeps values, so fine-tuning can go on.
    np.testing.assert_array_equal(_np(twin_layer.lora_kernel_b), 0.0)
    assert np.abs(_np(twin_layer.lora_kernel_a)).max() > 0
    np.testing.assert_allclose(
        _np(twin_layer._kernel), _numpy_merged_kernel(factors), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(_np(twin(x)), _np(model(x)))


def test_lora_keras_round_trip_in_safe_mode(tmp_path):
    factors = _fine_tuned_factors(26)
    model, _ = _lora_parallel_model(factors, "lora_keras")
    x = np.random.default_rng(27).normal(size=(5, LORA_INPUT)).astype("float32")
    path = str(tmp_path / "lora.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    layer = loaded.layers[0]
    assert layer.lora_enabled and layer.lora_rank == LORA_RANK
    assert not layer._kernel.trainable
    np.testing.assert_array_equal(_np(layer.lora_kernel_b), 0.0)
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))
    # Fine-tuning goes on from the merged kernel: `b` trains, the kernel stays.
    loaded.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    loaded.fit(x, np.ones((5, LORA_BRANCHES, LORA_UNITS)), epochs=1, verbose=0)
    assert np.abs(_np(layer.lora_kernel_b)).max() > 0
    np.testing.assert_allclose(
        _np(layer._kernel), _numpy_merged_kernel(factors), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("policy", ["float16", "mixed_float16", "bfloat16"])
def test_lora_computes_in_the_layer_dtype(policy):
    # The factors stay float32 (as `Dense` keeps them); the merged kernel and
    # the outputs are in the compute dtype, as `Dense(dtype=policy)` with LoRA.
    factors = _fine_tuned_factors(28)
    layer = ParallelDense(
        LORA_UNITS,
        LORA_BRANCHES,
        lora_rank=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        dtype=policy,
        name=_name("lora_half"),
    )
    model = keras.Sequential([keras.Input((LORA_INPUT,)), layer])
    layer._kernel.assign(factors["kernel"])
    layer.bias.assign(factors["bias"])
    layer.lora_kernel_a.assign(factors["a"])
    layer.lora_kernel_b.assign(factors["b"])
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    assert layer.lora_kernel_a.dtype == "float32"
    assert layer.lora_kernel_b.dtype == "float32"
    x = np.random.default_rng(29).normal(size=(5, LORA_INPUT)).astype("float32")
    outputs = model(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == compute
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == compute
    # The kernel, bias and inputs as the layer holds them, in float64.
    kernel = _np(layer._kernel).astype("float64")
    bias = _np(layer.bias).astype("float64")
    scale = LORA_ALPHA / LORA_RANK
    merged = kernel + scale * np.einsum("nir,nro->nio", factors["a"], factors["b"])
    expected = np.einsum("bi,nio->bno", x.astype(compute).astype("float64"), merged)
    tolerance = 0.05 if compute == "bfloat16" else 0.01
    np.testing.assert_allclose(
        _np(outputs).astype("float64"),
        expected + bias,
        rtol=tolerance,
        atol=tolerance * np.abs(expected).max(),
    )
    # A training step runs in that dtype and moves `b`.
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, np.zeros((5, LORA_BRANCHES, LORA_UNITS)), epochs=1, verbose=0)
    assert not np.array_equal(_np(layer.lora_kernel_b), factors["b"])


def test_lora_saving_matches_keras_dense(tmp_path):
    factors = _fine_tuned_factors(28)
    model, layer = _lora_parallel_model(factors, "lora_vs_dense")
    peers = _lora_dense_models(factors)
    x = np.random.default_rng(29).normal(size=(5, LORA_INPUT)).astype("float32")
    model.save(tmp_path / "parallel.keras")
    loaded = keras.saving.load_model(tmp_path / "parallel.keras", safe_mode=True)
    outputs = _np(loaded(x))
    split = layer.to_layers()
    for n, peer in enumerate(peers):
        peer.save(tmp_path / f"dense_{n}.keras")
        peer_loaded = keras.saving.load_model(
            tmp_path / f"dense_{n}.keras", safe_mode=True
        )
        peer_layer = peer_loaded.layers[0]
        # Keras' Dense saved its merged kernel and zeroed `b` too.
        np.testing.assert_array_equal(_np(peer_layer.lora_kernel_b), 0.0)
        np.testing.assert_allclose(
            _np(loaded.layers[0]._kernel[n]),
            _np(peer_layer._kernel),
            rtol=1e-6,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            outputs[:, n], _np(peer_loaded(x)), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(_np(split[n](x)), _np(peer(x)), rtol=1e-5, atol=1e-5)
        assert not split[n].lora_enabled


def test_loading_weights_of_another_shape_fails_clearly(tmp_path):
    without_bias = keras.Sequential(
        [keras.Input((4,)), ParallelDense(3, 2, use_bias=False, name=_name("nb"))]
    )
    path = str(tmp_path / "no_bias.weights.h5")
    without_bias.save_weights(path)
    with_bias = keras.Sequential(
        [keras.Input((4,)), ParallelDense(3, 2, name=_name("wb"))]
    )
    with pytest.raises(ValueError, match=r"expected 2 \(kernel, bias\)"):
        with_bias.load_weights(path)
