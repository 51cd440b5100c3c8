"""A Dense layer that can also be called in reverse, with its kernel transposed."""

from __future__ import annotations

import keras
from keras import ops

from keras_tether._validation import check_bool, keras_identifiers
from keras_tether.layers._reversible_sites import CallSites, ReversibleCalls


@keras.saving.register_keras_serializable(package="keras_tether")
class ReversibleDense(ReversibleCalls, keras.layers.Dense):
    """Densely-connected layer that can also map back with its kernel transposed.

    Called as usual, `layer(x)` is exactly `keras.layers.Dense`:
    `output = activation(dot(x, kernel) + bias)`. Called with `reverse=True`,
    `layer(y, reverse=True)` maps the output space back to the input space
    with the very same kernel:
    `output = reverse_activation(dot(y, transpose(kernel)) + reverse_bias)`.
    The reverse bias is the layer's own second bias, of size `input_dim`.

    This is how to tie weights in Keras: one layer owns the kernel and is
    called at both sites, as `keras.layers.ReversibleEmbedding` is for
    embeddings. Gradients from both directions reach the one kernel, it is
    counted once, and Keras keeps the tie through `clone_model`,
    `Model.from_config`, `.keras` files and `save_weights` because the model
    holds one layer called twice. Both directions read `layer.kernel`, so a
    LoRA update, a quantized kernel (`quantize("int8")`) or a parametrization
    (`keras_tether.layers.Parametrized`) acts on both. Masks pass through both
    directions.

    Call both directions at the same level: both as nodes of a functional
    model, or both inside the one custom layer that creates the layer. A layer
    called from two levels would come back as two copies when the model is
    rebuilt, so such a call raises a `ValueError`. The layer must be built
    (called forward, or `build((..., input_dim))`) before its first reverse
    call.

    Args:
        units: Positive integer, dimensionality of the output space.
        activation: Activation function of the forward direction. Defaults to
            none (`a(x) = x`).
        use_bias: Boolean, whether the forward direction adds a bias vector.
        reverse_activation: Activation function of the reverse direction.
            Defaults to none.
        reverse_use_bias: Boolean, whether the reverse direction adds its own
            bias vector (of size `input_dim`).
        kernel_initializer: Initializer for the `kernel` weights matrix.
        bias_initializer: Initializer for the forward bias vector.
        reverse_bias_initializer: Initializer for the reverse bias vector.
        kernel_regularizer: Regularizer function applied to the `kernel`.
        bias_regularizer: Regularizer function applied to the forward bias.
        reverse_bias_regularizer: Regularizer function applied to the reverse
            bias.
        activity_regularizer: Regularizer function applied to the output of
            the layer (both directions).
        kernel_constraint: Constraint function applied to the `kernel`.
        bias_constraint: Constraint function applied to the forward bias.
        reverse_bias_constraint: Constraint function applied to the reverse
            bias.
        lora_rank: Optional integer. If set, the layer's forward pass will
            implement LoRA (Low-Rank Adaptation) with the provided rank, as in
            `keras.layers.Dense`; the reverse direction reads the same
            updated kernel.
        lora_alpha: Optional float, the LoRA scale numerator (defaults to
            `lora_rank`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: The input tensor.
        training: Unused by the layer; accepted like `keras.layers.Dense`.
        reverse: Boolean. If `True`, map from `units` back to `input_dim`
            with the transposed kernel. Defaults to `False`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`, or
        `(batch_size, ..., units)` with `reverse=True`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`, or
        `(batch_size, ..., input_dim)` with `reverse=True`.

    Example:

    >>> import keras
    >>> from keras_tether.layers import ReversibleDense
    >>> dense = ReversibleDense(2, activation="relu", reverse_activation="sigmoid")
    >>> inputs = keras.Input(shape=(5,))
    >>> code = dense(inputs)
    >>> outputs = dense(code, reverse=True)
    >>> model = keras.Model(inputs, outputs)
    >>> tuple(model.output.shape)
    (None, 5)
    >>> model.count_params()  # 5*2 kernel once, 2 + 5 biases
    17

    References:
        - [Hinton & Salakhutdinov, 2006](https://doi.org/10.1126/science.1127647)
        - [Press and Wolf, 2016](https://arxiv.org/abs/1608.05859)
    """

    def __init__(
        self,
        units: int,
        activation=None,
        use_bias: bool = True,
        reverse_activation=None,
        reverse_use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        reverse_bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        reverse_bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        reverse_bias_constraint=None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        **kwargs,
    ):
        reverse_use_bias = check_bool(reverse_use_bias, "reverse_use_bias")
        identifiers = keras_identifiers(
            activation=activation,
            reverse_activation=reverse_activation,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            reverse_bias_initializer=reverse_bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            reverse_bias_regularizer=reverse_bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            reverse_bias_constraint=reverse_bias_constraint,
        )
        super().__init__(
            units,
            activation=identifiers["activation"],
            use_bias=use_bias,
            kernel_initializer=identifiers["kernel_initializer"],
            bias_initializer=identifiers["bias_initializer"],
            kernel_regularizer=identifiers["kernel_regularizer"],
            bias_regularizer=identifiers["bias_regularizer"],
            activity_regularizer=identifiers["activity_regularizer"],
            kernel_constraint=identifiers["kernel_constraint"],
            bias_constraint=identifiers["bias_constraint"],
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            **kwargs,
        )
        self.reverse_activation = identifiers["reverse_activation"]
        self.reverse_use_bias = reverse_use_bias
        self.reverse_bias_initializer = identifiers["reverse_bias_initializer"]
        self.reverse_bias_regularizer = identifiers["reverse_bias_regularizer"]
        self.reverse_bias_constraint = identifiers["reverse_bias_constraint"]
        self._call_sites = CallSites(self)
        self._uses: tuple[str, ...] = ()

    def build(self, input_shape):
        super().build(input_shape)
        self.input_dim = int(input_shape[-1])
        if self.reverse_use_bias:
            self.reverse_bias = self.add_weight(
                name="reverse_bias",
                shape=(self.input_dim,),
                initializer=self.reverse_bias_initializer,
                regularizer=self.reverse_bias_regularizer,
                constraint=self.reverse_bias_constraint,
            )
        else:
            self.reverse_bias = None
        # The reverse direction takes `units` features, so the input
        # specification cannot pin the last axis; `call` checks it instead.
        self.input_spec = keras.InputSpec(min_ndim=2)

    def call(self, inputs, training=None, reverse=False):
        self._call_sites.check(self, inputs)
        if not reverse:
            return super().call(inputs, training=training)
        return self._reverse_finish(ops.matmul(inputs, ops.transpose(self.kernel)))

    def _reverse_finish(self, x):
        if self.reverse_bias is not None:
            x = ops.add(x, self.reverse_bias)
        if self.reverse_activation is not None:
            x = self.reverse_activation(x)
        return x

    def _int8_call(self, inputs, training=None, reverse=False):
        self._call_sites.check(self, inputs)
        if not reverse:
            return super()._int8_call(inputs, training=training)
        # The int8 kernel holds round(kernel * scale) with one scale per
        # output unit: the reverse product divides the scale out of the
        # inputs before the transposed kernel, which is exactly
        # `inputs @ transpose(kernel / scale)`.
        kernel = ops.cast(self._kernel, self.compute_dtype)
        scale = ops.cast(self.kernel_scale, self.compute_dtype)
        x = ops.matmul(ops.divide(inputs, scale), ops.transpose(kernel))
        if self.lora_enabled:
            lora = ops.matmul(
                ops.matmul(inputs, ops.transpose(self.lora_kernel_b)),
                ops.transpose(self.lora_kernel_a),
            )
            x = ops.add(x, ops.cast((self.lora_alpha / self.lora_rank) * lora, x.dtype))
        return self._reverse_finish(x)

    def quantize(self, mode=None, type_check=True, config=None):
        if mode != "int8":
            raise NotImplementedError(
                f"Layer '{self.name}' ({type(self).__name__}) supports only "
                f'`quantize("int8")`, whose reverse direction reads the int8 '
                f"kernel through its scales. Received: mode={mode!r}"
            )
        super().quantize(mode, type_check=False, config=config)

    def compute_output_shape(self, input_shape, reverse=False):
        output_shape = list(input_shape)
        output_shape[-1] = self.input_dim if reverse else self.units
        return tuple(output_shape)

    def compute_output_spec(self, inputs, training=None, reverse=False):
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape, reverse=reverse),
            dtype=self.compute_dtype,
        )

    @property
    def variable_serialization_spec(self):
        # The reverse bias is stored after everything `Dense` stores, so the
        # entries of a `Dense` keep their places.
        spec = super().variable_serialization_spec
        if not self.reverse_use_bias:
            return spec
        return {mode: [*names, "reverse_bias"] for mode, names in spec.items()}

    def _check_features(self, inputs, reverse: bool) -> None:
        expected = self.units if reverse else self.input_dim
        shape = getattr(inputs, "shape", None)
        if shape is None or len(shape) == 0 or shape[-1] is None:
            return
        if int(shape[-1]) != expected:
            direction = "`reverse=True`" if reverse else "the forward direction"
            size = "units" if reverse else "input_dim"
            raise ValueError(
                f"Layer '{self.name}' expects inputs with {expected} features "
                f"({size}) in {direction}. Received: inputs.shape={tuple(shape)}"
            )
