"""`WeightedAverage`: a learnable convex combination of parallel branches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether import simplex as simplex_maps
from keras_tether._types import Shape, Tensor
from keras_tether._validation import (
    check_bool,
    check_int,
    check_number,
    check_optional_int,
    check_temperature,
    get_keras_object,
)

# Keeps the normalization finite for constant inputs; statistics are float32.
_NORMALIZATION_EPSILON = 1e-6
# Up to this many branches, inputs are mixed by a running sum
# `w_1 * x_1 + ...` (a stacked input is unstacked first), which reads each
# input once; above it, by one weighted sum along the stacked branch axis
# (see `WeightedAverage.call`).
_RUNNING_SUM_MAX_BRANCHES = 16
# Slack allowed when checking that `initial_weights` sum to one, per branch.
_SUM_TOLERANCE = 1e-6


@keras.saving.register_keras_serializable(package="keras_tether")
class WeightedAverage(keras.layers.Layer):
    """Learnable weighted average of parallel branches, weights summing to one.

    Called on a list of `N >= 2` tensors `x_1, ..., x_N`, the layer returns

    `output = gamma * (w_1 * x_1 + ... + w_N * x_N)`

    where the mixture weights `w` lie on the probability simplex (`w_i >= 0`,
    `sum_i w_i = 1`) and `gamma = 1` unless `scale=True`. The layer learns `N`
    free parameters, its `logits`, and maps them onto the simplex with a
    simplex map from `keras_tether.simplex`: softmax by default, or sparsemax
    and entmax-1.5 (which can give a branch exactly zero weight), the
    normalized ReLU of EfficientDet's fast fusion, or a straight-through
    Gumbel-softmax that samples one branch in training and is deterministic
    at inference (the branch of largest logit; with
    `keras_tether.simplex.GumbelSoftmax(hard=False)`, the tempered softmax
    of the logits). The inputs broadcast against each other as in
    `keras.layers.Add`: their batch sizes must agree, the other axes are
    aligned at the right, and a lower-rank input is expanded after the batch
    axis.

    With `branch_axis`, the layer is called on one tensor whose branches lie
    along that axis, such as the `(batch, N, ...)` output of
    `keras_tether.layers.ParallelDense`, and mixes along it: the output has
    that axis removed. Every option below works in both forms. Integer and
    boolean inputs are averaged as numbers, in the layer's compute dtype.

    With `feature_axis`, every feature along that axis of the (broadcast)
    inputs gets its own mixture: the logits have shape `(N, features)` and
    each feature's `N` weights sum to one.

    The weights sum to one with every simplex map but `"relu_normalized"`,
    which follows EfficientDet: its weights sum to `s / (s + epsilon)`, where
    `s` is the sum of the rectified logits, so they fall short of one by about
    `epsilon / s` (1e-4 / s by default).

    In training, `branch_dropout` drops each branch independently before the
    simplex map, so the remaining weights still sum to one (if every branch
    is dropped, none is). `mixture_regularizer` adds a penalty on the
    weights to the layer's losses; `EntropyRegularizer` (in this package)
    pushes them toward one branch or toward an even mix.

    The logits (and `gamma`) are float32 variables whatever the dtype
    policy, and the simplex map runs in float32; only the final weights are
    cast to the layer's compute dtype, so mixed precision and extreme logits
    keep the weights finite and summing to one. Output masks follow the
    Keras merge layers: the logical OR of the input masks, or no mask if
    any input has none.

    The current weights are available as a NumPy array, `mixture_weights`.

    Args:
        simplex: String, `keras_tether.simplex.SimplexMap` or its config:
            how logits map to weights. One of `"softmax"`, `"sparsemax"`,
            `"entmax15"`, `"relu_normalized"` and `"gumbel_softmax"`, or a
            map object such as `keras_tether.simplex.Sparsemax()`.
            Defaults to `"softmax"`.
        temperature: Positive float or `None`. If set, it replaces the
            temperature of `simplex`, which must be a map that has one
            (`"softmax"`, `"gumbel_softmax"`): lower temperatures give
            sharper mixtures. Defaults to `None` (the map's own, 1.0 for
            the named maps).
        initial_weights: Optional list of `N` non-negative floats summing to
            one, the weights the layer starts from; the logits are derived
            from them with the map's inverse. With `feature_axis`, it may
            also be a nested list of shape `(N, features)` whose columns sum
            to one. Maps that cannot reach zero (softmax, Gumbel-softmax)
            reject zero weights. Defaults to `None`: equal weights `1 / N`.
        feature_axis: Optional integer, an axis of the inputs other than
            the batch axis (counted with the batch axis, as in
            `keras.layers.Concatenate`; negative values count from the
            end). If set, each feature along this axis has its own mixture.
            Its size must be known when the layer is built. With
            `branch_axis`, it is an axis of the stacked input other than the
            batch and branch axes. Defaults to `None`: one weight per branch.
        branch_axis: Optional integer, an axis of the input other than the
            batch axis (negative values count from the end). If set, the
            layer is called on one tensor and mixes the `N >= 2` slices
            along this axis, whose size must be known when the layer is
            built. Defaults to `None`: the layer is called on a list.
        scale: Boolean, whether to learn a scalar `gamma` (initialized to
            1) multiplying the output, as in ELMo's scalar mix. Defaults to
            `False`.
        normalize_inputs: Boolean, whether to normalize each input, per
            example, over all its axes but the batch axis, to zero mean and
            unit variance before mixing (parameter-free layer normalization,
            as in ELMo's scalar mix). Masked positions are left out of the
            statistics. Defaults to `False`.
        branch_dropout: Float in `[0, 1)`, the probability that a branch is
            left out of the mixture in a training call. Defaults to `0.0`.
        mixture_regularizer: Optional `keras.regularizers.Regularizer` (or
            its name, config, or any callable) applied to the normalized
            weights, shape `(N,)` or `(N, features)`, at every call. Its
            value is added to the layer's losses. Defaults to `None`.
        seed: Optional integer, the seed of the random numbers used by
            `branch_dropout` and the Gumbel-softmax map.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.
            `trainable=False` freezes the weights.

    Call arguments:
        inputs: A list of `N >= 2` tensors of broadcast-compatible shapes,
            or with `branch_axis` one tensor holding the branches along it.
        training: Python boolean, whether the call is in training mode
            (branch dropout and Gumbel noise only apply then).
        mask: Optional list of input masks (one mask with `branch_axis`),
            supplied by Keras.

    Input shape:
        A list of `N` tensors of shapes `(batch_size, ...)` that broadcast
        against each other, or with `branch_axis=1` one tensor of shape
        `(batch_size, N, ...)`.

    Output shape:
        The broadcast shape of the inputs, `(batch_size, ...)`; with
        `branch_axis`, the input's shape without that axis.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_tether
    >>> x1 = np.full((2, 3), 1.0)
    >>> x2 = np.full((2, 3), 3.0)
    >>> layer = keras_tether.layers.WeightedAverage(initial_weights=[0.75, 0.25])
    >>> np.round(keras.ops.convert_to_numpy(layer([x1, x2])), 4)
    array([[1.5, 1.5, 1.5],
           [1.5, 1.5, 1.5]], dtype=float32)
    >>> np.round(layer.mixture_weights, 4)
    array([0.75, 0.25], dtype=float32)

    Mixing three branches of a functional model with sparsemax:

    >>> inputs = [keras.Input(shape=(16,)) for _ in range(3)]
    >>> branches = [keras.layers.Dense(10)(x) for x in inputs]
    >>> mixed = keras_tether.layers.WeightedAverage(simplex="sparsemax")(branches)
    >>> model = keras.Model(inputs, mixed)
    >>> model.output_shape
    (None, 10)

    Mixing the branches of one stacked tensor, shape `(batch, N, features)`:

    >>> stacked = np.stack([x1, x2], axis=1)
    >>> layer = keras_tether.layers.WeightedAverage(
    ...     initial_weights=[0.75, 0.25], branch_axis=1)
    >>> np.round(keras.ops.convert_to_numpy(layer(stacked)), 4)
    array([[1.5, 1.5, 1.5],
           [1.5, 1.5, 1.5]], dtype=float32)

    References:
        - [Peters et al., 2018](https://arxiv.org/abs/1802.05365), ELMo's
          scalar mix.
        - [Tan, Pang and Le, 2020](https://arxiv.org/abs/1911.09070),
          EfficientDet's fast normalized fusion.
        - [Martins and Astudillo, 2016](https://arxiv.org/abs/1602.02068),
          sparsemax.
        - [Peters, Niculae and Martins, 2019](https://arxiv.org/abs/1905.05702),
          entmax.
        - [Jang, Gu and Poole, 2017](https://arxiv.org/abs/1611.01144),
          Gumbel-softmax.
    """

    def __init__(
        self,
        simplex: str | simplex_maps.SimplexMap | dict = "softmax",
        temperature: float | None = None,
        initial_weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
        feature_axis: int | None = None,
        branch_axis: int | None = None,
        scale: bool = False,
        normalize_inputs: bool = False,
        branch_dropout: float = 0.0,
        mixture_regularizer: keras.regularizers.Regularizer
        | str
        | dict
        | Callable
        | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ):
        if temperature is not None:
            temperature = check_temperature(temperature)
        if feature_axis is not None and check_int(feature_axis, "feature_axis") == 0:
            raise ValueError(
                "Received an invalid value for `feature_axis`, expected an "
                "integer axis of the inputs other than the batch axis 0, or "
                f"None. Received: feature_axis={feature_axis!r}"
            )
        if branch_axis is not None:
            branch_axis = check_int(branch_axis, "branch_axis")
            if branch_axis == 0:
                raise ValueError(
                    "Received an invalid value for `branch_axis`, expected an "
                    "integer axis of the input other than the batch axis 0, or "
                    f"None. Received: branch_axis={branch_axis!r}"
                )
        if not 0 <= check_number(branch_dropout, "branch_dropout") < 1:
            raise ValueError(
                "Received an invalid value for `branch_dropout`, expected a "
                f"float in [0, 1). Received: branch_dropout={branch_dropout!r}"
            )
        check_bool(scale, "scale")
        check_bool(normalize_inputs, "normalize_inputs")
        super().__init__(**kwargs)
        self.simplex = simplex_maps.get(simplex, temperature)
        self.temperature = None if temperature is None else float(temperature)
        self.initial_weights = _validate_initial_weights(initial_weights, feature_axis)
        self.feature_axis = feature_axis
        self.branch_axis = branch_axis
        self.scale = scale
        self.normalize_inputs = normalize_inputs
        self.branch_dropout = float(branch_dropout)
        self.mixture_regularizer = get_keras_object(
            keras.regularizers.get,
            mixture_regularizer,
            "mixture_regularizer",
            "a regularizer",
        )
        self.seed = check_optional_int(seed, "seed")
        self.seed_generator = None
        if self.branch_dropout > 0 or isinstance(
            self.simplex, simplex_maps.GumbelSoftmax
        ):
            self.seed_generator = keras.random.SeedGenerator(seed)
        self._initial_logits = None
        if self.initial_weights is not None:
            self._initial_logits = self._inverse(np.asarray(self.initial_weights))

    def build(self, input_shape: Shape | Sequence[Shape]) -> None:
        if self.branch_axis is None:
            shapes = _check_input_shapes(input_shape)
            output_shape = _broadcast_shape(shapes)
            self._num_branches = len(shapes)
            self._expand_counts = [len(output_shape) - len(shape) for shape in shapes]
            # The inputs are stacked along a new axis 1; feature axes are
            # counted on the inputs, so those after the batch axis shift by one.
            stacked_shape = output_shape[:1] + (self._num_branches,) + output_shape[1:]
            self._stacked_branch_axis = 1
            feature_axis = None
            if self.feature_axis is not None:
                feature_axis = _resolve_feature_axis(self.feature_axis, output_shape)
                feature_axis += 1
        else:
            stacked_shape = _check_stacked_shape(input_shape)
            self._stacked_branch_axis = _resolve_branch_axis(
                self.branch_axis, stacked_shape
            )
            self._num_branches = stacked_shape[self._stacked_branch_axis]
            feature_axis = None
            if self.feature_axis is not None:
                feature_axis = _resolve_stacked_feature_axis(
                    self.feature_axis, stacked_shape, self._stacked_branch_axis
                )
        self._stacked_feature_axis = feature_axis
        self._stacked_rank = len(stacked_shape)
        logits_shape = (self._num_branches,)
        if feature_axis is not None:
            logits_shape += (stacked_shape[feature_axis],)
        initial_logits = self._logits_for_shape(logits_shape)
        self.logits = self.add_weight(
            name="logits",
            shape=logits_shape,
            initializer=lambda shape, dtype: ops.convert_to_tensor(
                initial_logits, dtype=dtype
            ),
            dtype="float32",
            autocast=False,
        )
        self.gamma = None
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=(),
                initializer="ones",
                dtype="float32",
                autocast=False,
            )

    @property
    def mixture_weights(self) -> np.ndarray:
        """The current mixture weights, a float32 NumPy array summing to one.

        Shape `(N,)`, or `(N, features)` with `feature_axis` (each column
        sums to one). These are the inference weights: no branch dropout, no
        Gumbel noise (one-hot for the hard Gumbel-softmax), and without
        `gamma`. Each read converts the current logits on the host, so it
        is for inspection and callbacks, not for use inside a model.
        """
        if not self.built:
            raise ValueError(
                f"`mixture_weights` of layer '{self.name}' is not available "
                "before the layer is built: call the layer on its inputs first."
            )
        weights = self.simplex(self.logits, axis=0, training=False)
        return np.asarray(ops.convert_to_numpy(weights), dtype="float32")

    def call(
        self,
        inputs: Tensor | Sequence[Tensor],
        training: bool | None = None,
        mask: Tensor | Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        if self.branch_axis is None:
            self._check_call_inputs(inputs)
            inputs = [self._to_float(x) for x in inputs]
            if self.normalize_inputs:
                masks = mask if mask is not None else [None] * len(inputs)
                inputs = [
                    self._normalize(x, m, axes=tuple(range(1, len(x.shape))))
                    for x, m in zip(inputs, masks, strict=True)
                ]
            inputs = [
                self._expand(x, count)
                for x, count in zip(inputs, self._expand_counts, strict=True)
            ]
            weights = self._mixture(bool(training))
            if self._num_branches <= _RUNNING_SUM_MAX_BRANCHES:
                return _running_sum(inputs, weights)
            # XLA fuses each branch's gradient with the whole chain of sums,
            # so a running sum compiles in time quadratic in N; one stacked
            # tensor and one weighted sum compile in linear time.
            stacked = ops.stack(_broadcast_to_common_shape(inputs), axis=1)
            return ops.sum(stacked * weights, axis=1)
        self._check_stacked_call_input(inputs)
        stacked = self._to_float(inputs)
        if self.normalize_inputs:
            axes = tuple(
                axis
                for axis in range(1, len(stacked.shape))
                if axis != self._stacked_branch_axis
            )
            stacked = self._normalize(stacked, mask, axes=axes)
        weights = self._mixture(bool(training))
        axis = self._stacked_branch_axis
        # As for a list of inputs: with few branches, a sum along the branch
        # axis (a reduction over a middle axis, slow on XLA's CPU backend)
        # costs more than one product and one addition per branch.
        if self._num_branches <= _RUNNING_SUM_MAX_BRANCHES:
            return _running_sum(
                ops.unstack(stacked, num=self._num_branches, axis=axis),
                weights,
                axis=axis,
            )
        return ops.sum(stacked * weights, axis=axis)

    def compute_output_shape(self, input_shape: Shape | Sequence[Shape]) -> tuple:
        if self.branch_axis is not None:
            shape = _check_stacked_shape(input_shape)
            axis = _resolve_branch_axis(self.branch_axis, shape)
            if self.built and shape[axis] not in (None, self._num_branches):
                self._raise_wrong_branch_count(shape)
            return shape[:axis] + shape[axis + 1 :]
        shapes = _check_input_shapes(input_shape)
        if self.built:
            self._check_num_inputs(shapes)
        return _broadcast_shape(shapes)

    def compute_mask(
        self,
        inputs: Tensor | Sequence[Tensor],
        mask: Tensor | Sequence[Tensor | None] | None = None,
    ) -> Tensor | None:
        if mask is None:
            return None
        if self.branch_axis is not None:
            axis = _resolve_branch_axis(self.branch_axis, tuple(inputs.shape))
            if axis < len(mask.shape):
                return ops.any(mask, axis=axis)
            return mask
        if not isinstance(mask, list | tuple) or len(mask) != len(inputs):
            raise ValueError(
                "Expected one mask per input of the `WeightedAverage` layer. "
                f"Received: {len(inputs)} inputs and mask={mask}"
            )
        if any(m is None for m in mask):
            return None
        output_mask = mask[0]
        for m in mask[1:]:
            output_mask = ops.logical_or(output_mask, m)
        return output_mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "simplex": keras.saving.serialize_keras_object(self.simplex),
                "temperature": self.temperature,
                "initial_weights": self.initial_weights,
                "feature_axis": self.feature_axis,
                "branch_axis": self.branch_axis,
                "scale": self.scale,
                "normalize_inputs": self.normalize_inputs,
                "branch_dropout": self.branch_dropout,
                "mixture_regularizer": keras.saving.serialize_keras_object(
                    self.mixture_regularizer
                ),
                "seed": self.seed,
            }
        )
        return config

    def _inverse(self, weights: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.simplex.inverse(weights, axis=0), dtype="float32")
        except ValueError as error:
            raise ValueError(
                "Received an invalid value for `initial_weights`: the "
                f"{type(self.simplex).__name__} simplex map cannot produce "
                f"them ({error}). Received: initial_weights={weights.tolist()}"
            ) from error

    def _logits_for_shape(self, logits_shape: tuple) -> np.ndarray:
        num_branches = logits_shape[0]
        if self._initial_logits is None:
            return self._inverse(np.full(logits_shape, 1.0 / num_branches))
        given = np.shape(self._initial_logits)
        if given[0] != num_branches or (len(given) == 2 and given != logits_shape):
            expected = "one weight per input" if len(given) == 1 else "one row"
            raise ValueError(
                "Received an invalid value for `initial_weights`, expected "
                f"shape {logits_shape[: len(given)]} ({expected}, for "
                f"{num_branches} inputs). Received: initial_weights="
                f"{self.initial_weights} of shape {given}"
            )
        return np.broadcast_to(
            np.reshape(
                self._initial_logits, given + (1,) * (len(logits_shape) - len(given))
            ),
            logits_shape,
        ).copy()

    def _check_call_inputs(self, inputs: Any) -> None:
        if not isinstance(inputs, list | tuple):
            raise TypeError(
                "The `WeightedAverage` layer should be called on a list of "
                f"{self._num_branches} tensors. Received: `inputs` of "
                f"shape {tuple(getattr(inputs, 'shape', ()))} "
                "(one tensor, not a list). "
                "To mix one tensor along an axis, pass `branch_axis`."
            )
        self._check_num_inputs([tuple(x.shape) for x in inputs])

    def _check_stacked_call_input(self, inputs: Any) -> None:
        shape = _check_stacked_shape(
            [tuple(x.shape) for x in inputs]
            if isinstance(inputs, list | tuple)
            else tuple(inputs.shape)
        )
        if len(shape) != self._stacked_rank or shape[self._stacked_branch_axis] not in (
            None,
            self._num_branches,
        ):
            self._raise_wrong_branch_count(shape)

    def _raise_wrong_branch_count(self, shape: tuple) -> None:
        raise ValueError(
            f"The `WeightedAverage` layer was built for {self._num_branches} "
            f"branches along axis {self._stacked_branch_axis} of inputs of rank "
            f"{self._stacked_rank} (branch_axis={self.branch_axis}). Received: "
            f"an input of shape {shape}"
        )

    def _to_float(self, x: Tensor) -> Tensor:
        # Integer and boolean inputs are averaged as numbers, in the compute
        # dtype, on every backend (TensorFlow would not multiply them by
        # float weights).
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)):
            return x
        return ops.cast(x, self.compute_dtype)

    def _check_num_inputs(self, shapes: list[tuple]) -> None:
        if len(shapes) != self._num_branches:
            raise ValueError(
                f"The `WeightedAverage` layer was built for {self._num_branches} "
                f"inputs and is now called on {len(shapes)}. Received: inputs "
                f"of shapes {shapes}"
            )

    def _mixture(self, training: bool) -> Tensor:
        branch_mask = None
        if training and self.branch_dropout > 0:
            keep = (
                keras.random.uniform((self._num_branches,), seed=self.seed_generator)
                >= self.branch_dropout
            )
            keep = ops.reshape(keep, (-1,) + (1,) * (len(self.logits.shape) - 1))
            branch_mask = ops.broadcast_to(keep, self.logits.shape)
        weights = self.simplex(
            self.logits,
            axis=0,
            training=training,
            seed=self.seed_generator,
            mask=branch_mask,
        )
        if self.mixture_regularizer is not None:
            # The penalty is on the mixing distribution itself, not on one
            # noisy or branch-dropped draw of it.
            if training and self.seed_generator is not None:
                distribution = self.simplex(self.logits, axis=0, training=False)
            else:
                distribution = weights
            self.add_loss(self.mixture_regularizer(distribution))
        if self.gamma is not None:
            weights = weights * self.gamma
        weights = ops.cast(weights, self.compute_dtype)
        # Place the branch (and feature) axis where the stacked input has it.
        shape = [1] * self._stacked_rank
        shape[self._stacked_branch_axis] = self._num_branches
        if self._stacked_feature_axis is not None:
            shape[self._stacked_feature_axis] = self.logits.shape[1]
            if self._stacked_feature_axis < self._stacked_branch_axis:
                weights = ops.transpose(weights)
        return ops.reshape(weights, tuple(shape))

    def _normalize(self, x: Tensor, mask: Tensor | None, axes: tuple) -> Tensor:
        x = ops.cast(x, "float32")
        if mask is None:
            mean, variance = ops.moments(x, axes=axes, keepdims=True)
        else:
            mask = ops.cast(mask, "float32")
            while len(mask.shape) < len(x.shape):
                mask = ops.expand_dims(mask, -1)
            count = ops.sum(
                ops.broadcast_to(mask, ops.shape(x)), axis=axes, keepdims=True
            )
            count = ops.maximum(count, 1.0)
            mean = ops.sum(x * mask, axis=axes, keepdims=True) / count
            variance = (
                ops.sum(ops.square((x - mean) * mask), axis=axes, keepdims=True) / count
            )
        x = (x - mean) * ops.rsqrt(variance + _NORMALIZATION_EPSILON)
        return ops.cast(x, self.compute_dtype)

    @staticmethod
    def _expand(x: Tensor, count: int) -> Tensor:
        for _ in range(count):
            x = ops.expand_dims(x, axis=1)
        return x


def weighted_average(inputs: Sequence[Tensor], **kwargs: Any) -> Tensor:
    """Functional interface to the `WeightedAverage` layer.

    Args:
        inputs: A list of `N >= 2` tensors of broadcast-compatible shapes.
        **kwargs: Keyword arguments of `WeightedAverage`, e.g. `simplex`,
            `initial_weights`, and base layer arguments such as `name`.

    Returns:
        A tensor, the weighted average of the inputs (equal weights unless
        `initial_weights` says otherwise).

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_tether
    >>> x1 = np.zeros((2, 4))
    >>> x2 = np.ones((2, 4))
    >>> y = keras_tether.layers.weighted_average([x1, x2])
    >>> np.round(keras.ops.convert_to_numpy(y), 4)
    array([[0.5, 0.5, 0.5, 0.5],
           [0.5, 0.5, 0.5, 0.5]], dtype=float32)
    """
    return WeightedAverage(**kwargs)(inputs)


def _running_sum(inputs: list[Tensor], weights: Tensor, axis: int = 1) -> Tensor:
    """`sum_i weights[..., i, ...] * inputs[i]`, one product and one sum per input.

    `weights` has the branches along `axis` and size 1 or the feature size
    along the others; each input broadcasts against its slice.
    """
    branch_weights = ops.unstack(weights, num=len(inputs), axis=axis)
    output = inputs[0] * branch_weights[0]
    for x, weight in zip(inputs[1:], branch_weights[1:], strict=True):
        output = output + x * weight
    return output


def _validate_initial_weights(
    initial_weights: Any, feature_axis: int | None
) -> list | None:
    if initial_weights is None:
        return None
    try:
        weights = np.asarray(initial_weights, dtype="float64")
    except (TypeError, ValueError) as error:
        raise TypeError(
            "Received an invalid value for `initial_weights`, expected a list "
            f"of numbers. Received: initial_weights={initial_weights!r}"
        ) from error
    max_rank = 1 if feature_axis is None else 2
    if not 1 <= weights.ndim <= max_rank or weights.shape[0] < 2:
        shapes = "(N,)" if feature_axis is None else "(N,) or (N, features)"
        raise ValueError(
            "Received an invalid value for `initial_weights`, expected shape "
            f"{shapes} with N >= 2 inputs. Received: initial_weights="
            f"{initial_weights!r} of shape {weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "Received an invalid value for `initial_weights`, expected "
            "non-negative finite numbers. Received: "
            f"initial_weights={weights.tolist()}"
        )
    sums = weights.sum(axis=0)
    if np.any(np.abs(sums - 1.0) > _SUM_TOLERANCE * weights.shape[0]):
        raise ValueError(
            "Received an invalid value for `initial_weights`, expected weights "
            "that sum to one (over the inputs). Received: "
            f"initial_weights={weights.tolist()}, which sum to {sums.tolist()}"
        )
    return (weights / sums).tolist()


def _check_input_shapes(input_shape: Any) -> list[tuple]:
    if not isinstance(input_shape, list | tuple) or not all(
        isinstance(shape, list | tuple) for shape in input_shape
    ):
        raise TypeError(
            "The `WeightedAverage` layer should be called on a list of at "
            "least 2 tensors. Received: `inputs` of shape "
            f"{input_shape} (one tensor, not a list). To mix one tensor along an axis, "
            "pass `branch_axis`."
        )
    shapes = [tuple(shape) for shape in input_shape]
    if len(shapes) < 2:
        raise ValueError(
            "The `WeightedAverage` layer should be called on a list of at "
            f"least 2 tensors. Received: `inputs` of shapes {shapes} "
            f"({len(shapes)} input)"
        )
    if any(len(shape) == 0 for shape in shapes):
        raise ValueError(
            "Every input of the `WeightedAverage` layer needs a batch axis. "
            f"Received: `inputs` of shapes {shapes}"
        )
    return shapes


def _check_stacked_shape(input_shape: Any) -> tuple:
    if isinstance(input_shape, list | tuple) and any(
        isinstance(shape, list | tuple) for shape in input_shape
    ):
        raise TypeError(
            "The `WeightedAverage` layer with `branch_axis` should be called on "
            "one tensor whose branches lie along that axis. Received: a list "
            f"of {len(input_shape)} inputs. Stack them, or leave `branch_axis` "
            "as None to mix a list."
        )
    shape = tuple(input_shape)
    if len(shape) < 2:
        raise ValueError(
            "The input of the `WeightedAverage` layer with `branch_axis` needs "
            f"a batch axis and a branch axis. Received: an input of shape {shape}"
        )
    return shape


def _resolve_branch_axis(branch_axis: int, shape: tuple) -> int:
    rank = len(shape)
    axis = branch_axis + rank if branch_axis < 0 else branch_axis
    if not 1 <= axis < rank:
        raise ValueError(
            "Received an invalid value for `branch_axis`, expected an axis of "
            f"the input other than the batch axis, in [{1 - rank}, {rank - 1}] "
            f"excluding 0, for an input of shape {shape}. "
            f"Received: branch_axis={branch_axis}"
        )
    if shape[axis] is None or shape[axis] < 2:
        raise ValueError(
            "Received an invalid value for `branch_axis`: the input must have "
            "a known number of at least 2 branches along it when the layer is "
            f"built. Received: branch_axis={branch_axis} for an input of "
            f"shape {shape}"
        )
    return axis


def _resolve_stacked_feature_axis(
    feature_axis: int, shape: tuple, branch_axis: int
) -> int:
    rank = len(shape)
    axis = feature_axis + rank if feature_axis < 0 else feature_axis
    if not 1 <= axis < rank or axis == branch_axis:
        raise ValueError(
            "Received an invalid value for `feature_axis`, expected an axis "
            f"of the input other than the batch axis and the branch axis "
            f"{branch_axis}, in [{1 - rank}, {rank - 1}], for an input of "
            f"shape {shape}. Received: feature_axis={feature_axis}"
        )
    if shape[axis] is None:
        raise ValueError(
            "Received an invalid value for `feature_axis`: the size of that "
            "axis must be known when the layer is built. Received: "
            f"feature_axis={feature_axis} for an input of shape {shape}"
        )
    return axis


def _broadcast_to_common_shape(inputs: list[Tensor]) -> list[Tensor]:
    shapes = [tuple(x.shape) for x in inputs]
    if len(set(shapes)) == 1:
        return inputs
    target = []
    for axis in range(len(shapes[0])):
        sizes = [shape[axis] for shape in shapes]
        source = next((i for i, size in enumerate(sizes) if size != 1), 0)
        target.append(ops.shape(inputs[source])[axis])
    return [
        x if shape == tuple(target) else ops.broadcast_to(x, target)
        for x, shape in zip(inputs, shapes, strict=True)
    ]


def _broadcast_shape(shapes: list[tuple]) -> tuple:
    batch_sizes = {shape[0] for shape in shapes} - {None}
    if len(batch_sizes) > 1:
        raise ValueError(
            "The inputs of the `WeightedAverage` layer should have the same "
            f"batch size. Received: `inputs` of shapes {shapes}"
        )
    width = max(len(shape) for shape in shapes) - 1
    padded = [(1,) * (width + 1 - len(shape)) + shape[1:] for shape in shapes]
    output = [batch_sizes.pop() if batch_sizes else None]
    for position, sizes in enumerate(zip(*padded, strict=True)):
        known = set(sizes) - {None, 1}
        if len(known) > 1:
            raise ValueError(
                "The inputs of the `WeightedAverage` layer should have shapes "
                "that broadcast against each other, as in `keras.layers.Add`, "
                f"but axis {position + 1} has sizes {sorted(known)}. "
                f"Received: `inputs` of shapes {shapes}"
            )
        if known:
            output.append(known.pop())
        else:
            output.append(None if None in sizes else 1)
    return tuple(output)


def _resolve_feature_axis(feature_axis: int, output_shape: tuple) -> int:
    rank = len(output_shape)
    axis = feature_axis + rank if feature_axis < 0 else feature_axis
    if not 1 <= axis < rank:
        raise ValueError(
            "Received an invalid value for `feature_axis`, expected an axis "
            f"of the inputs other than the batch axis, in [{1 - rank}, "
            f"{rank - 1}] excluding 0, for inputs of shape {output_shape}. "
            f"Received: feature_axis={feature_axis}"
        )
    if output_shape[axis] is None:
        raise ValueError(
            "Received an invalid value for `feature_axis`: the size of that "
            "axis must be known when the layer is built. Received: "
            f"feature_axis={feature_axis} for inputs of shape {output_shape}"
        )
    return axis
