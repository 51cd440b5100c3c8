"""`WeightedAverage` over a list on both sides of its running-sum threshold.

A list of up to `_RUNNING_SUM_MAX_BRANCHES` inputs is mixed by a running sum,
a longer one by a weighted sum of the stacked inputs. Both must give the
NumPy weighted sum and its NumPy derivative, for the logits and for every
input, with broadcasting inputs and per-feature weights.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tether.layers import WeightedAverage
from keras_tether.layers import _weighted_average as weighted_average_module

THRESHOLD = weighted_average_module._RUNNING_SUM_MAX_BRANCHES
# Both sides of the threshold, and its edges.
BRANCH_COUNTS = [2, THRESHOLD, THRESHOLD + 1, 2 * THRESHOLD + 3]
BATCH = 3
# Shapes cycled over the inputs: a lower-rank input is expanded after the
# batch axis, and size-1 axes broadcast, as in `keras.layers.Add`.
INPUT_SHAPES = [(BATCH, 4, 5), (BATCH, 5), (BATCH, 1, 5), (BATCH, 4, 1)]


class Holder(keras.layers.Layer):
    """Returns its own variable, so that SGD exposes the input's gradient."""

    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = np.asarray(value, "float32")

    def build(self, input_shape):
        self.x = self.add_weight(
            shape=self.value.shape,
            initializer=keras.initializers.Constant(self.value),
        )

    def call(self, inputs):
        return ops.convert_to_tensor(self.x) + 0.0 * ops.sum(inputs)

    def compute_output_shape(self, input_shape):
        return self.value.shape


def aligned(x, rank):
    # Expand after the batch axis, as the layer does for a lower-rank input.
    return x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:])


def np_softmax(logits):
    z = np.exp(logits - logits.max(axis=0, keepdims=True))
    return z / z.sum(axis=0, keepdims=True)


def case(num_branches, per_feature, seed):
    rng = np.random.default_rng(seed)
    shapes = [INPUT_SHAPES[i % len(INPUT_SHAPES)] for i in range(num_branches)]
    inputs = [rng.normal(size=shape) for shape in shapes]
    logits_shape = (num_branches, 5) if per_feature else (num_branches,)
    logits = rng.normal(size=logits_shape)
    target = rng.normal(size=(BATCH, 4, 5))
    return inputs, logits, target


def np_forward(inputs, logits):
    # The weights of one branch broadcast over the batch and the middle axis;
    # per-feature weights run along the last axis.
    weights = np_softmax(logits)
    return sum(w * aligned(x, 3) for w, x in zip(weights, inputs, strict=True))


def np_gradients(inputs, logits, target):
    """d mean((output - target)^2) by the chain rule, worked out in NumPy."""
    weights = np_softmax(logits)
    output = np_forward(inputs, logits)
    upstream = 2 * (output - target) / output.size
    input_grads = []
    for w, x in zip(weights, inputs, strict=True):
        grad = w * upstream
        # Sum over the axes the input was broadcast along, back to its shape.
        broadcast = aligned(x, 3)
        axes = tuple(
            axis
            for axis in range(3)
            if broadcast.shape[axis] == 1 and grad.shape[axis] != 1
        )
        input_grads.append(np.sum(grad, axis=axes, keepdims=True).reshape(x.shape))
    per_weight_axes = (0, 1) if logits.ndim == 2 else (0, 1, 2)
    weight_grads = np.stack(
        [np.sum(upstream * aligned(x, 3), axis=per_weight_axes) for x in inputs]
    )
    # The softmax Jacobian: dL/dz_i = w_i (dL/dw_i - sum_j w_j dL/dw_j).
    logit_grads = weights * (
        weight_grads - np.sum(weights * weight_grads, axis=0, keepdims=True)
    )
    return logit_grads, input_grads


def build(inputs, logits, per_feature):
    dummy = keras.Input(shape=(1,))
    holders = [Holder(x) for x in inputs]
    layer = WeightedAverage(feature_axis=-1 if per_feature else None)
    model = keras.Model(dummy, layer([holder(dummy) for holder in holders]))
    layer.logits.assign(logits.astype("float32"))
    return model, layer, holders


@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("num_branches", BRANCH_COUNTS)
def test_output_is_the_numpy_weighted_sum(num_branches, per_feature):
    inputs, logits, _ = case(num_branches, per_feature, seed=num_branches)
    layer = WeightedAverage(feature_axis=-1 if per_feature else None)
    layer.build([x.shape for x in inputs])
    layer.logits.assign(logits.astype("float32"))
    output = layer([x.astype("float32") for x in inputs])
    expected = np_forward(inputs, logits)
    assert tuple(output.shape) == expected.shape
    np.testing.assert_allclose(
        ops.convert_to_numpy(output), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("num_branches", BRANCH_COUNTS)
def test_gradients_match_the_numpy_derivative(num_branches, per_feature):
    inputs, logits, target = case(num_branches, per_feature, seed=100 + num_branches)
    model, layer, holders = build(inputs, logits, per_feature)
    # One SGD step with learning rate 1 moves each variable by minus its
    # gradient.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    model.train_on_batch(np.zeros((BATCH, 1), "float32"), target.astype("float32"))
    logit_grads, input_grads = np_gradients(inputs, logits, target)
    assert np.abs(logit_grads).max() > 1e-4
    np.testing.assert_allclose(
        logits - ops.convert_to_numpy(layer.logits), logit_grads, rtol=2e-3, atol=2e-6
    )
    for x, holder, expected in zip(inputs, holders, input_grads, strict=True):
        moved = x - ops.convert_to_numpy(holder.x)
        np.testing.assert_allclose(moved, expected, rtol=2e-3, atol=2e-6)


def test_both_sides_of_the_threshold_agree_in_a_model():
    # The same model mixing THRESHOLD and THRESHOLD + 1 inputs, where the
    # extra input has weight zero (sparsemax), gives the same output.
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(2, 3)).astype("float32") for _ in range(THRESHOLD)]
    weights = rng.dirichlet(np.ones(THRESHOLD))
    short = WeightedAverage(simplex="sparsemax", initial_weights=weights.tolist())
    long = WeightedAverage(
        simplex="sparsemax", initial_weights=[*weights.tolist(), 0.0]
    )
    extra = rng.normal(size=(2, 3)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(long([*inputs, extra])),
        ops.convert_to_numpy(short(inputs)),
        rtol=1e-5,
        atol=1e-6,
    )
