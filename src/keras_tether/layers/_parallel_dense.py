"""`ParallelDense`: N independent `Dense` layers held in one stacked kernel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._keras_internals import weights_added_after_build
from keras_tether._types import Shape, Tensor
from keras_tether._validation import (
    check_bool,
    check_positive_int,
    check_positive_number,
    keras_identifiers,
)

# Seeds handed to per-branch initializers stay in int32's positive range,
# which every backend's seed handling accepts.
_MAX_SEED = 2**31 - 1


@keras.saving.register_keras_serializable(package="keras_tether")
class ParallelDense(keras.layers.Layer):
    """`branches` independent densely-connected layers computed as one layer.

    Branch `n` computes `output[:, n] = activation(x_n @ kernel[n] + bias[n])`,
    exactly what `branches` separate `keras.layers.Dense` layers compute, but
    with one stacked kernel of shape `(branches, input_dim, units)` and one
    bias of shape `(branches, units)`, so the whole ensemble is a single
    matrix product instead of `branches` layers, kernel launches and Python
    calls. With `per_branch_inputs=False` (the default) every branch reads the
    same input `x`; with `per_branch_inputs=True` the input carries a branch
    axis after the batch axis and branch `n` reads its own slice `x[:, n]`,
    which is how a second `ParallelDense` continues the branches of a first.

    Each branch is initialized exactly as a separate `Dense` would be: the
    initializers are called once per branch, on the branch's own
    `(input_dim, units)` shape, so fan-based initializers (Glorot, He, LeCun,
    `VarianceScaling` in any mode) see the fans of one branch rather than of
    the stack, and `Orthogonal` makes each branch orthogonal. A seeded
    initializer gives a reproducible layer whose branches still differ.
    Regularizers and constraints also act on each branch's kernel, as they
    would on `branches` separate `Dense` layers (`MaxNorm(axis=0)` normalizes
    each branch's columns).

    `from_layers` stacks `Dense` layers into one `ParallelDense` and
    `to_layers` splits it again; both copy the weights exactly.

    `enable_lora(rank)` gives every branch its own low-rank update, as
    `Dense.enable_lora` does for one layer. Saving follows `Dense` too: the
    saved kernel has each branch's update merged into it and the LoRA
    factors are not saved; loading puts that kernel in the frozen kernel and
    sets `b` to zero, so the outputs are those of the fine-tuned layer. (A
    loaded `Dense` also zeroes `a`, which stops its LoRA from learning;
    here `a` keeps its initial values and a loaded layer can be fine-tuned
    again.) `to_layers` gives
    `Dense` layers holding the merged kernels. Quantization is not supported:
    `quantize` raises `NotImplementedError` (so `Model.quantize` warns and
    skips the layer); split the layer with `to_layers` to quantize branches.

    Masks are passed through: a mask of the input becomes, for shared
    inputs, the same mask for every branch.

    Args:
        units: Positive integer, the output size of each branch.
        branches: Positive integer, the number of branches.
        activation: Activation function of each branch. Defaults to `None`
            (linear).
        use_bias: Boolean, whether the branches use a bias. Defaults to
            `True`.
        kernel_initializer: Initializer of each branch's kernel, shape
            `(input_dim, units)`. Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer of each branch's bias, shape
            `(units,)`. Defaults to `"zeros"`.
        kernel_regularizer: Regularizer applied to each branch's kernel; the
            layer's penalty is the sum over branches. Defaults to `None`.
        bias_regularizer: Regularizer applied to each branch's bias.
            Defaults to `None`.
        activity_regularizer: Regularizer applied to the output.
            Defaults to `None`.
        kernel_constraint: Constraint applied to each branch's kernel.
            Defaults to `None`.
        bias_constraint: Constraint applied to each branch's bias.
            Defaults to `None`.
        per_branch_inputs: Boolean. If `False` (the default), every branch
            reads the whole input; if `True`, the input's axis 1 is the
            branch axis, of size `branches`, and branch `n` reads slice `n`.
        lora_rank: Optional positive integer. If set, LoRA is enabled on
            every branch when the layer is built (see `enable_lora`).
        lora_alpha: Optional positive number, the LoRA scale numerator: the
            update is `lora_alpha / lora_rank * a @ b`. Defaults to
            `lora_rank`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        `(batch_size, ..., input_dim)`, or with `per_branch_inputs=True`
        `(batch_size, branches, ..., input_dim)`.

    Output shape:
        `(batch_size, branches, ..., units)`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_tether
    >>> x = np.ones((2, 8), dtype="float32")
    >>> layer = keras_tether.layers.ParallelDense(4, branches=3)
    >>> tuple(layer(x).shape)
    (2, 3, 4)
    >>> tuple(layer.kernel.shape)
    (3, 8, 4)

    An ensemble of three two-layer MLPs whose outputs are mixed with
    learned weights that sum to one:

    >>> inputs = keras.Input(shape=(8,))
    >>> hidden = keras_tether.layers.ParallelDense(
    ...     16, branches=3, activation="relu")(inputs)
    >>> outputs = keras_tether.layers.ParallelDense(
    ...     2, branches=3, per_branch_inputs=True)(hidden)
    >>> mixed = keras_tether.layers.WeightedAverage(branch_axis=1)(outputs)
    >>> keras.Model(inputs, mixed).output_shape
    (None, 2)

    Stacking separate `Dense` layers and splitting them again:

    >>> denses = [keras.layers.Dense(4) for _ in range(3)]
    >>> _ = [dense(x) for dense in denses]
    >>> stacked = keras_tether.layers.ParallelDense.from_layers(denses)
    >>> bool(np.allclose(keras.ops.convert_to_numpy(stacked(x)[:, 1]),
    ...                  keras.ops.convert_to_numpy(denses[1](x))))
    True
    >>> len(stacked.to_layers())
    3

    References:
        - [Wen, Tran and Ba, 2020](https://arxiv.org/abs/2002.06715),
          BatchEnsemble, on computing ensemble members in one pass.
        - [Hu et al., 2021](https://arxiv.org/abs/2106.09685), LoRA.
    """

    def __init__(
        self,
        units: int,
        branches: int,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer | Callable = (
            "glorot_uniform"
        ),
        bias_initializer: str | keras.initializers.Initializer | Callable = "zeros",
        kernel_regularizer: keras.regularizers.Regularizer | str | None = None,
        bias_regularizer: keras.regularizers.Regularizer | str | None = None,
        activity_regularizer: keras.regularizers.Regularizer | str | None = None,
        kernel_constraint: keras.constraints.Constraint | str | None = None,
        bias_constraint: keras.constraints.Constraint | str | None = None,
        per_branch_inputs: bool = False,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        **kwargs: Any,
    ):
        units = check_positive_int(units, "units")
        branches = check_positive_int(branches, "branches")
        use_bias = check_bool(use_bias, "use_bias")
        per_branch_inputs = check_bool(per_branch_inputs, "per_branch_inputs")
        if lora_rank is not None:
            lora_rank = check_positive_int(lora_rank, "lora_rank")
        if lora_alpha is not None:
            lora_alpha = check_positive_number(lora_alpha, "lora_alpha")
        identifiers = keras_identifiers(
            activation=activation,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        super().__init__(
            activity_regularizer=identifiers.pop("activity_regularizer"), **kwargs
        )
        if self.quantization_mode is not None:
            raise ValueError(
                "`ParallelDense` does not support quantization. Received: "
                f"dtype={self.dtype_policy.name!r} (quantization mode "
                f"{self.quantization_mode!r})"
            )
        self.units = units
        self.branches = branches
        self.activation = identifiers["activation"]
        self.use_bias = use_bias
        self.kernel_initializer = identifiers["kernel_initializer"]
        self.bias_initializer = identifiers["bias_initializer"]
        self.kernel_regularizer = identifiers["kernel_regularizer"]
        self.bias_regularizer = identifiers["bias_regularizer"]
        self.kernel_constraint = identifiers["kernel_constraint"]
        self.bias_constraint = identifiers["bias_constraint"]
        self.per_branch_inputs = per_branch_inputs
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else lora_rank
        self.lora_enabled = False
        self.supports_masking = True

    def build(self, input_shape: Shape) -> None:
        input_shape = tuple(input_shape)
        self._check_branch_axis(input_shape)
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last axis of the input of `ParallelDense` must have a "
                f"known size. Received: input of shape {input_shape}"
            )
        self._kernel = self.add_weight(
            name="kernel",
            shape=(self.branches, input_dim, self.units),
            initializer=_PerBranch(self.kernel_initializer),
            regularizer=_per_branch_regularizer(self.kernel_regularizer),
            constraint=_per_branch_constraint(self.kernel_constraint),
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.branches, self.units),
                initializer=_PerBranch(self.bias_initializer),
                regularizer=_per_branch_regularizer(self.bias_regularizer),
                constraint=_per_branch_constraint(self.bias_constraint),
            )
        self.built = True
        if self.lora_rank:
            self.enable_lora(self.lora_rank, lora_alpha=self.lora_alpha)

    @property
    def kernel(self) -> Tensor:
        """The stacked kernel, shape `(branches, input_dim, units)`.

        With LoRA enabled, the frozen kernel plus each branch's low-rank
        update.
        """
        if not self.built:
            raise AttributeError(
                f"`kernel` of layer '{self.name}' is not available before the "
                "layer is built: call the layer on its inputs first."
            )
        if not self.lora_enabled:
            return self._kernel
        return self._merged_kernel(self.compute_dtype)

    def _merged_kernel(self, dtype: str) -> Tensor:
        """The frozen kernel plus each branch's LoRA update, cast to `dtype`.

        The factors are float32 whatever the policy (as `Dense` keeps them,
        so that fine-tuning neither underflows nor overflows); the sum is
        taken at the wider of the two dtypes and cast once, as `Dense` does.
        """
        update = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
        merged = ops.add(
            self._kernel, ops.multiply(self.lora_alpha / self.lora_rank, update)
        )
        if keras.backend.standardize_dtype(merged.dtype) == dtype:
            return merged
        return ops.cast(merged, dtype)

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        self._check_branch_axis(tuple(inputs.shape))
        kernel = self.kernel
        if self.per_branch_inputs and _as_block_diagonal(inputs, kernel):
            # A few small branches: one 2-D product against the block-diagonal
            # kernel.
            flat_inputs = ops.reshape(inputs, (-1, self.branches * kernel.shape[1]))
            return self._flat_product(
                flat_inputs,
                _block_diagonal(kernel),
                lambda flat: ops.reshape(flat, (-1, self.branches, self.units)),
            )
        if self.per_branch_inputs:
            outputs = _per_branch_product(inputs, kernel)
            if self.bias is not None:
                middle = len(inputs.shape) - 3
                bias = ops.reshape(
                    self.bias, (self.branches,) + (1,) * middle + (self.units,)
                )
                outputs = outputs + bias
            return self.activation(outputs)

        # All branches read the same input: one matrix product against the
        # branches' kernels side by side.
        def split_branches(flat: Tensor) -> Tensor:
            outputs = ops.reshape(
                flat, tuple(ops.shape(inputs)[:-1]) + (self.branches, self.units)
            )
            if len(inputs.shape) > 2:
                outputs = ops.moveaxis(outputs, -2, 1)
            return outputs

        return self._flat_product(inputs, _side_by_side(kernel), split_branches)

    def _flat_product(
        self, inputs: Tensor, flat_kernel: Tensor, split_branches: Callable
    ) -> Tensor:
        """`activation(inputs @ flat_kernel + bias)`, branch axis split off.

        The product holds every branch's units side by side; `split_branches`
        gives it the layer's output shape. An elementwise activation is
        applied before that, on the 2-D product, where TensorFlow fuses it
        into the product (XLA treats it alike either way); any other, such as
        a softmax over each branch's units, after.
        """
        outputs = ops.matmul(inputs, flat_kernel)
        if self.bias is not None:
            # Added before the branch axis is split off: XLA on CPU fuses a
            # bias of the product's own shape into the product, and not one
            # broadcast over a new axis.
            outputs = outputs + ops.reshape(self.bias, (-1,))
        if self.activation in _ELEMENTWISE_ACTIVATIONS:
            return split_branches(self.activation(outputs))
        return self.activation(split_branches(outputs))

    def compute_output_shape(self, input_shape: Shape) -> tuple:
        input_shape = tuple(input_shape)
        self._check_branch_axis(input_shape)
        if self.per_branch_inputs:
            return input_shape[:-1] + (self.units,)
        return (input_shape[0], self.branches) + input_shape[1:-1] + (self.units,)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor | None:
        if mask is None or self.per_branch_inputs:
            return mask
        return ops.repeat(ops.expand_dims(mask, axis=1), self.branches, axis=1)

    def enable_lora(
        self,
        rank: int,
        lora_alpha: float | None = None,
        a_initializer: str | keras.initializers.Initializer = "he_uniform",
        b_initializer: str | keras.initializers.Initializer = "zeros",
    ) -> None:
        """Freezes the kernel and learns a low-rank update for every branch.

        Branch `n`'s kernel becomes `kernel[n] + lora_alpha / rank *
        a[n] @ b[n]`, with `a` of shape `(branches, input_dim, rank)` and
        `b` of shape `(branches, rank, units)`; `a` is initialized per
        branch like a separate `Dense`'s `lora_kernel_a`, `b` to zeros, so
        the outputs do not change until training moves `b`. As in `Dense`,
        `a` and `b` are float32 under any dtype policy (fine-tuning in
        float16 would underflow), and the merged kernel is cast to the
        layer's compute dtype.

        Args:
            rank: Positive integer, the rank of each branch's update.
            lora_alpha: Optional positive number, the scale numerator.
                Defaults to `rank`.
            a_initializer: Initializer of `a`, per branch. Defaults to
                `"he_uniform"`.
            b_initializer: Initializer of `b`, per branch. Defaults to
                `"zeros"`.
        """
        rank = check_positive_int(rank, "rank")
        if lora_alpha is not None:
            lora_alpha = check_positive_number(lora_alpha, "lora_alpha")
        if self.kernel_constraint:
            raise ValueError(
                "LoRA is incompatible with kernel constraints. To enable LoRA "
                f"on layer '{self.name}', remove its `kernel_constraint`. "
                f"Received: kernel_constraint={self.kernel_constraint!r}"
            )
        if not self.built:
            raise ValueError(
                f"Cannot enable LoRA on layer '{self.name}' before it is built: "
                "call the layer on its inputs first."
            )
        if self.lora_enabled:
            raise ValueError(
                f"LoRA is already enabled on layer '{self.name}'; it can only "
                "be enabled once."
            )
        input_dim = self._kernel.shape[1]
        with weights_added_after_build(self):
            self.lora_kernel_a = self.add_weight(
                name="lora_kernel_a",
                shape=(self.branches, input_dim, rank),
                initializer=_PerBranch(keras.initializers.get(a_initializer)),
                dtype="float32",
                regularizer=_per_branch_regularizer(self.kernel_regularizer),
            )
            self.lora_kernel_b = self.add_weight(
                name="lora_kernel_b",
                shape=(self.branches, rank, self.units),
                initializer=_PerBranch(keras.initializers.get(b_initializer)),
                dtype="float32",
                regularizer=_per_branch_regularizer(self.kernel_regularizer),
            )
            self._kernel.trainable = False
        self.lora_enabled = True
        self.lora_rank = rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else rank

    def save_own_variables(self, store: Any) -> None:
        # As Keras' `Dense` does: with LoRA enabled, each branch's update is
        # merged into the saved kernel and the LoRA factors are not saved,
        # so a fine-tuned layer saves as a plain one with the same outputs.
        if not self.built:
            return
        # In the variable's dtype: under a mixed policy the compute dtype
        # would round the saved kernel.
        store["0"] = (
            self._merged_kernel(self._kernel.dtype)
            if self.lora_enabled
            else self._kernel
        )
        if self.bias is not None:
            store["1"] = self.bias

    def load_own_variables(self, store: Any) -> None:
        if not self.built:
            return
        expected = "1 (the kernel)" if self.bias is None else "2 (kernel, bias)"
        if len(store.keys()) != int(expected[0]):
            raise ValueError(
                f"Layer '{self.name}' (`ParallelDense`) expected {expected} "
                f"saved variables, but received {len(store.keys())} variables "
                "during loading."
            )
        self._kernel.assign(store["0"])
        if self.bias is not None:
            self.bias.assign(store["1"])
        if self.lora_enabled:
            # The loaded kernel already holds the update, so the update
            # restarts from zero. Only `b` is zeroed: `Dense` zeroes `a` as
            # well, which leaves both factors with zero gradients, so its
            # loaded LoRA can no longer learn; `a` keeps its initial values.
            self.lora_kernel_b.assign(ops.zeros(self.lora_kernel_b.shape))

    def quantize(self, mode: Any = None, type_check: bool = True, config: Any = None):
        raise NotImplementedError(
            f"Layer '{self.name}' of type `ParallelDense` does not support "
            f"quantization (received mode={mode!r}); it stays in float. To "
            "quantize the branches, split the layer with `to_layers()` and "
            "quantize the resulting `Dense` layers."
        )

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[keras.layers.Dense],
        per_branch_inputs: bool = False,
        **kwargs: Any,
    ) -> ParallelDense:
        """Stacks built `Dense` layers into one `ParallelDense`, weights copied.

        The layers must agree on input size, `units`, `activation`,
        `use_bias`, regularizers, constraints and dtype policy; the new
        layer takes their settings (initializers from the first layer) and
        its branch `n` holds a copy of `layers[n]`'s kernel and bias. A
        layer with LoRA enabled contributes its effective (merged) kernel.

        Args:
            layers: A list of built `keras.layers.Dense` layers.
            per_branch_inputs: Boolean, as in the constructor.
            **kwargs: Base layer keyword arguments of the new layer, such
                as `name`.

        Returns:
            A built `ParallelDense` with `len(layers)` branches.
        """
        dense_layers = _check_dense_layers(layers)
        first = dense_layers[0]
        config = first.get_config()
        input_dim = first.kernel.shape[0]
        layer = cls(
            units=first.units,
            branches=len(dense_layers),
            activation=config["activation"],
            use_bias=first.use_bias,
            kernel_initializer=config["kernel_initializer"],
            bias_initializer=config["bias_initializer"],
            kernel_regularizer=config["kernel_regularizer"],
            bias_regularizer=config["bias_regularizer"],
            activity_regularizer=config.get("activity_regularizer"),
            kernel_constraint=config["kernel_constraint"],
            bias_constraint=config["bias_constraint"],
            per_branch_inputs=per_branch_inputs,
            **{"dtype": first.dtype_policy, **kwargs},
        )
        input_shape = (None, len(dense_layers)) if per_branch_inputs else (None,)
        layer.build(input_shape + (input_dim,))
        layer._kernel.assign(
            np.stack([ops.convert_to_numpy(d.kernel) for d in dense_layers])
        )
        if layer.bias is not None:
            layer.bias.assign(
                np.stack([ops.convert_to_numpy(d.bias) for d in dense_layers])
            )
        return layer

    def to_layers(self) -> list[keras.layers.Dense]:
        """Splits the layer into `branches` built `Dense` layers, weights copied.

        Dense `n` computes exactly branch `n` (on `x`, or on `x[:, n]` with
        `per_branch_inputs=True`). With LoRA enabled, each `Dense` gets the
        effective (merged) kernel.

        Returns:
            A list of `branches` built `keras.layers.Dense` layers.
        """
        if not self.built:
            raise ValueError(
                f"Cannot split layer '{self.name}' before it is built: call the "
                "layer on its inputs first."
            )
        kernel = self._kernel
        if self.lora_enabled:
            kernel = self._merged_kernel(self._kernel.dtype)
        kernel = ops.convert_to_numpy(kernel)
        bias = None if self.bias is None else ops.convert_to_numpy(self.bias)
        layers = []
        for branch in range(self.branches):
            dense = keras.layers.Dense(
                self.units,
                activation=self.activation,
                use_bias=self.use_bias,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                kernel_regularizer=self.kernel_regularizer,
                bias_regularizer=self.bias_regularizer,
                activity_regularizer=self.activity_regularizer,
                kernel_constraint=self.kernel_constraint,
                bias_constraint=self.bias_constraint,
                dtype=self.dtype_policy,
            )
            dense.build((None, kernel.shape[1]))
            dense.kernel.assign(kernel[branch])
            if bias is not None:
                dense.bias.assign(bias[branch])
            layers.append(dense)
        return layers

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "branches": self.branches,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(
                    self.kernel_constraint
                ),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "per_branch_inputs": self.per_branch_inputs,
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
            }
        )
        return config

    def _check_branch_axis(self, input_shape: tuple) -> None:
        features = input_shape[-1] if input_shape else None
        if self.built and features is not None and features != self._kernel.shape[1]:
            raise ValueError(
                f"Layer '{self.name}' (`ParallelDense`) was built for "
                f"{self._kernel.shape[1]} input features, and its `inputs` must "
                f"keep that last axis. Received: `inputs` of shape {input_shape}"
            )
        if not self.per_branch_inputs:
            if len(input_shape) < 2:
                raise ValueError(
                    f"Layer '{self.name}' (`ParallelDense`) expects `inputs` of "
                    "shape (batch_size, ..., input_dim). Received: `inputs` of "
                    f"shape {input_shape}"
                )
            return
        if len(input_shape) < 3 or input_shape[1] not in (None, self.branches):
            raise ValueError(
                f"Layer '{self.name}' (`ParallelDense` with "
                f"branches={self.branches}, per_branch_inputs=True) expects "
                f"`inputs` of shape (batch_size, {self.branches}, ..., input_dim), "
                "one slice per branch along axis 1. Received: `inputs` of shape "
                f"{input_shape}"
            )


class _PerBranch:
    """Calls an initializer once per branch, on the shape of one branch.

    A Keras random initializer holding an integer seed returns the same
    values at every call, so each branch gets a copy seeded with its own
    seed, derived from the original one: reproducible, and different across
    branches. An initializer seeded by a `SeedGenerator` advances it at
    every call and is used as is.
    """

    def __init__(self, initializer: Callable):
        self.initializer = initializer

    def __call__(self, shape: tuple, dtype: Any = None) -> Tensor:
        branches, branch_shape = shape[0], tuple(shape[1:])
        values = [
            initializer(branch_shape, dtype=dtype)
            for initializer in self._branch_initializers(branches)
        ]
        return ops.stack(values, axis=0)

    def _branch_initializers(self, branches: int) -> list[Callable]:
        initializer = self.initializer
        seed = getattr(initializer, "seed", None)
        if (
            not isinstance(seed, int)
            or isinstance(seed, bool)
            or not isinstance(initializer, keras.initializers.Initializer)
        ):
            return [initializer] * branches
        config = initializer.get_config()
        return [
            type(initializer).from_config(
                {**config, "seed": _branch_seed(seed, branch)}
            )
            for branch in range(branches)
        ]


def _branch_seed(seed: int, branch: int) -> int:
    state = np.random.SeedSequence([seed % _MAX_SEED, branch]).generate_state(1)
    return int(state[0]) % _MAX_SEED


# The per-branch maps subclass Keras' base classes: Keras before 3.15 accepts
# only `Regularizer` and `Constraint` instances on a variable.
class _PerBranchRegularizer(keras.regularizers.Regularizer):
    """Applies a regularizer to each branch's slice; the penalty is their sum."""

    def __init__(self, regularizer: Callable):
        self.regularizer = regularizer

    def __call__(self, value: Tensor) -> Tensor:
        value = ops.convert_to_tensor(value)
        return ops.sum(ops.vectorized_map(self.regularizer, value))


class _PerBranchConstraint(keras.constraints.Constraint):
    """Applies a constraint to each branch's slice."""

    def __init__(self, constraint: Callable):
        self.constraint = constraint

    def __call__(self, value: Tensor) -> Tensor:
        return ops.vectorized_map(self.constraint, ops.convert_to_tensor(value))


def _per_branch_regularizer(regularizer: Callable | None):
    return None if regularizer is None else _PerBranchRegularizer(regularizer)


def _per_branch_constraint(constraint: Callable | None):
    return None if constraint is None else _PerBranchConstraint(constraint)


def _check_dense_layers(layers: Any) -> list[keras.layers.Dense]:
    if not isinstance(layers, list | tuple) or not layers:
        raise TypeError(
            "Expected `layers` to be a non-empty list of `keras.layers.Dense` "
            f"layers. Received: layers={layers!r}"
        )
    for index, layer in enumerate(layers):
        if not isinstance(layer, keras.layers.Dense):
            raise TypeError(
                "Expected `layers` to hold `keras.layers.Dense` layers. "
                f"Received: layers[{index}] of type {type(layer).__name__}"
            )
        if not layer.built:
            raise ValueError(
                f"Cannot stack layer '{layer.name}' (layers[{index}]): it is "
                "not built. Call it on its inputs first."
            )
        if layer.quantization_mode is not None:
            raise ValueError(
                f"Cannot stack layer '{layer.name}' (layers[{index}]): it is "
                f"quantized (quantization_mode={layer.quantization_mode!r}). "
                "Stack the layers before quantizing."
            )
    compared = (
        "activation",
        "use_bias",
        "units",
        "kernel_regularizer",
        "bias_regularizer",
        "activity_regularizer",
        "kernel_constraint",
        "bias_constraint",
        "dtype",
    )
    reference = layers[0].get_config()
    for index, layer in enumerate(layers[1:], start=1):
        config = layer.get_config()
        for key in compared:
            if config.get(key) != reference.get(key):
                raise ValueError(
                    "Expected `layers` to agree on every setting but their "
                    f"weights; `{key}` differs. Received: layers[0].{key}="
                    f"{reference.get(key)!r} and layers[{index}].{key}="
                    f"{config.get(key)!r}"
                )
        if layer.kernel.shape[0] != layers[0].kernel.shape[0]:
            raise ValueError(
                "Expected `layers` to share one input size. Received: "
                f"layers[0] with input size {layers[0].kernel.shape[0]} and "
                f"layers[{index}] with input size {layer.kernel.shape[0]}"
            )
    return list(layers)


# Activations that act on each entry alone, so that applying one before or
# after the branch axis is split off gives the same numbers. Looked up by
# identity: `keras.activations.get` returns these very functions for their
# names, and any other callable is applied per branch.
_ELEMENTWISE_ACTIVATIONS = frozenset(
    getattr(keras.activations, name)
    for name in (
        "celu",
        "elu",
        "exponential",
        "gelu",
        "hard_shrink",
        "hard_sigmoid",
        "hard_silu",
        "hard_tanh",
        "leaky_relu",
        "linear",
        "log_sigmoid",
        "mish",
        "relu",
        "relu6",
        "selu",
        "sigmoid",
        "silu",
        "soft_shrink",
        "softplus",
        "softsign",
        "sparse_plus",
        "sparse_sigmoid",
        "squareplus",
        "tanh",
        "tanh_shrink",
        "threshold",
    )
    if hasattr(keras.activations, name)
)


# The block-diagonal product does `branches` times the work of the per-branch
# products, and only pays where a step is made of small operations: with 3
# branches it beat the branch-major product on JAX and TensorFlow (torch was
# unchanged), and with 16 it lost on TensorFlow. `make bench` times the
# 3-branch model (`parallel N=3` rows).
_BLOCK_DIAGONAL_BRANCHES = 4
_BLOCK_DIAGONAL_ENTRIES = 256 * 256


def _as_block_diagonal(inputs: Tensor, kernel: Tensor) -> bool:
    """Whether to compute the per-branch products as one block-diagonal product."""
    branches, input_dim, units = kernel.shape
    return (
        len(inputs.shape) == 3
        and branches <= _BLOCK_DIAGONAL_BRANCHES
        and branches * input_dim * branches * units <= _BLOCK_DIAGONAL_ENTRIES
    )


def _side_by_side(kernel: Tensor) -> Tensor:
    """`(input_dim, branches * units)`, the branches' kernels side by side."""
    branches, input_dim, units = kernel.shape
    if keras.backend.backend() == "tensorflow":
        # The same numbers as the transpose below, moved by slicing and
        # concatenating: in a profile of the bench's 3-branch training step
        # on TensorFlow, the oneDNN transpose of the small kernel and its
        # gradient took longer than the matrix product itself.
        return ops.concatenate(ops.unstack(kernel, axis=0), axis=1)
    return ops.reshape(ops.transpose(kernel, (1, 0, 2)), (input_dim, branches * units))


def _block_diagonal(kernel: Tensor) -> Tensor:
    """`(branches * input_dim, branches * units)`, the kernels on the diagonal."""
    branches, input_dim, units = kernel.shape
    identity = ops.eye(branches, dtype=kernel.dtype)
    spread = ops.expand_dims(kernel, 2) * ops.reshape(
        identity, (branches, 1, branches, 1)
    )
    return ops.reshape(spread, (branches * input_dim, branches * units))


def _per_branch_product(inputs: Tensor, kernel: Tensor) -> Tensor:
    """`einsum("bn...i,nio->bn...o")`: each branch's slice times its kernel.

    Computed branch-major: the branch axis moved first, one batched matmul,
    moved back. Against the batch-major einsum this measured faster on every
    backend (`make bench`, per-branch product of 64 branches, batch 512, a
    training step on 2 CPU cores: 16.0 against 29.8 ms on JAX, 15.2 against
    22.8 ms on TensorFlow, 14.2 against 14.0 ms on PyTorch, which runs the
    einsum as permuted copies around the same batched product).
    """
    shape = tuple(ops.shape(inputs))
    branch_major = ops.reshape(ops.moveaxis(inputs, 1, 0), (shape[1], -1, shape[-1]))
    outputs = ops.matmul(branch_major, kernel)
    outputs = ops.reshape(outputs, (shape[1], shape[0]) + shape[2:-1] + (-1,))
    return ops.moveaxis(outputs, 0, 1)
