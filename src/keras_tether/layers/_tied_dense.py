"""A densely-connected layer computing with another layer's (transformed) weight."""

from __future__ import annotations

import keras
from keras import activations, ops

from keras_tether._transforms import get_transform
from keras_tether.layers._tied_layer import TiedLayer


@keras.saving.register_keras_serializable(package="keras_tether")
class TiedDense(TiedLayer):
    """Densely-connected layer whose kernel is another layer's weight.

    `TiedDense` computes `output = activation(dot(input, kernel) + bias)` like
    `keras.layers.Dense`, but `kernel` is not its own: it is
    `transform(getattr(source, weight))`, read live from the `source` layer at
    every call. With `transform="identity"` two layers share one kernel; with
    `transform="transpose"` one is the transpose of the other (a tied
    autoencoder decoder, or a language-model head tied to an embedding table
    via `weight="embeddings"`). The transform is a name registered with
    `keras_tether.ties.register_transform`, so configs stay loadable with
    `safe_mode=True`. Only the bias belongs to this layer.

    Args:
        source: The layer that owns the shared weight, e.g. a built
            `keras.layers.Dense` or `keras.layers.Embedding`.
        weight: String, the attribute of `source` that holds the weight.
            Defaults to `"kernel"`.
        transform: String, the name of a registered transform applied to the
            weight; the result must be a matrix `(input_dim, units)`.
            `"identity"` (default) or `"transpose"`, or your own.
        activation: Activation function to use. Defaults to none.
        use_bias: Boolean, whether the layer adds its own bias vector.
        bias_initializer: Initializer for the bias vector.
        bias_regularizer: Regularizer function applied to the bias vector.
        bias_constraint: Constraint function applied to the bias vector.
        activity_regularizer: Regularizer function applied to the output.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor whose last dimension is the transformed weight's
            first dimension.

    Input shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`, where `units` is the
        transformed weight's last dimension.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_tether.layers import TiedDense
    >>> first = keras.layers.Dense(3, use_bias=False)
    >>> second = TiedDense(first, use_bias=False)  # the very same kernel
    >>> x = np.ones((1, 3), dtype="float32")
    >>> to_numpy = keras.ops.convert_to_numpy
    >>> bool(np.allclose(to_numpy(first(x)), to_numpy(second(x))))
    True
    >>> len(second.weights)  # reads first.kernel, owns nothing
    1
    """

    def __init__(
        self,
        source: keras.layers.Layer,
        weight: str = "kernel",
        transform: str = "identity",
        activation=None,
        use_bias: bool = True,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        activity_regularizer=None,
        **kwargs,
    ):
        if not isinstance(weight, str) or not weight:
            raise TypeError(
                "Expected `weight` to be the name of an attribute of `source` "
                f"(a non-empty string). Received: weight={weight!r}"
            )
        self._transform_fn = get_transform(transform)
        super().__init__(
            source=source,
            use_bias=use_bias,
            bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer,
            bias_constraint=bias_constraint,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )
        self.weight = weight
        self.transform = transform
        self.activation = activations.get(activation)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        kernel_shape = self._kernel_shape()
        input_dim = input_shape[-1]
        if input_dim is not None and input_dim != kernel_shape[0]:
            raise ValueError(
                f"Layer '{self.name}' reads a kernel of shape {kernel_shape} "
                f"from layer '{self.source.name}', so its input's last "
                f"dimension must be {kernel_shape[0]}. Received: "
                f"input_shape={tuple(input_shape)}"
            )
        self.add_own_bias(kernel_shape[1])
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: kernel_shape[0]})

    @property
    def kernel(self):
        """The tensor this layer multiplies by: the transformed shared weight."""
        return self._transform_fn(self.read_source_weight(self.weight))

    @property
    def units(self) -> int:
        """Output dimension, the transformed weight's last dimension."""
        return self._kernel_shape()[1]

    def shared_variables(self) -> list:
        source = self.source
        bias = getattr(source, "bias", None)
        return [w for w in source.weights if w is not bias]

    def call(self, inputs):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        outputs = ops.matmul(inputs, kernel)
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self._kernel_shape()[1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight": self.weight,
                "transform": self.transform,
                "activation": activations.serialize(self.activation),
            }
        )
        return config

    def _kernel_shape(self) -> tuple[int, int]:
        value = self.read_source_weight(self.weight)
        symbolic = keras.KerasTensor(tuple(value.shape), dtype="float32")
        shape = tuple(self._transform_fn(symbolic).shape)
        if len(shape) != 2:
            raise ValueError(
                f"Layer '{self.name}' needs a matrix, but transform "
                f"{self.transform!r} of weight {self.weight!r} of layer "
                f"'{self.source.name}' has shape {shape}."
            )
        return shape
