"""A Dense layer whose kernel is the transpose of another Dense layer's."""

from __future__ import annotations

import keras

from keras_tether.layers._tied_dense import TiedDense


@keras.saving.register_keras_serializable(package="keras_tether")
class DenseTranspose(TiedDense):
    """Densely-connected layer tied to the transpose of a `Dense` kernel.

    `DenseTranspose(source)` computes
    `output = activation(dot(input, transpose(source.kernel)) + bias)`: it maps
    the `source` layer's output space back to its input space with the very
    same kernel, read live at every call. This is the decoder half of a tied
    autoencoder. Gradients from both layers reach the one kernel, so the two
    stay tied through training. The bias is this layer's own and is sized from
    the source's input dimension, so non-square kernels work. A LoRA-enabled
    source is read with its low-rank update; a quantized source is refused.

    Args:
        source: A built `keras.layers.Dense` (or subclass) that owns the
            kernel, shape `(input_dim, units)`.
        activation: Activation function to use. Defaults to none.
        use_bias: Boolean, whether the layer adds its own bias vector of
            size `input_dim`.
        bias_initializer: Initializer for the bias vector.
        bias_regularizer: Regularizer function applied to the bias vector.
        bias_constraint: Constraint function applied to the bias vector.
        activity_regularizer: Regularizer function applied to the output.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor whose last dimension is the source's `units`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`.

    Example:

    >>> import keras
    >>> from keras_tether.layers import DenseTranspose
    >>> encoder = keras.layers.Dense(2, activation="relu")
    >>> decoder = DenseTranspose(encoder)
    >>> inputs = keras.Input(shape=(5,))
    >>> model = keras.Model(inputs, decoder(encoder(inputs)))
    >>> tuple(model.output.shape)
    (None, 5)
    >>> model.count_params()  # 5*2 kernel + 2 + 5 biases: the kernel once
    17

    References:
        - [Hinton & Salakhutdinov, 2006](https://doi.org/10.1126/science.1127647)
    """

    source_types = (keras.layers.Dense,)

    def __init__(
        self,
        source: keras.layers.Dense,
        activation=None,
        use_bias: bool = True,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        activity_regularizer=None,
        **kwargs,
    ):
        for fixed in ("weight", "transform"):
            if fixed in kwargs:
                raise TypeError(
                    f"`DenseTranspose` always ties the transposed kernel; use "
                    f"`TiedDense` to choose `{fixed}`. Received: "
                    f"{fixed}={kwargs[fixed]!r}"
                )
        super().__init__(
            source=source,
            weight="kernel",
            transform="transpose",
            activation=activation,
            use_bias=use_bias,
            bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer,
            bias_constraint=bias_constraint,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        del config["weight"], config["transform"]
        return config
