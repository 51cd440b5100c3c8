"""A transposed convolution that computes with a convolution layer's kernel."""

from __future__ import annotations

import math

import keras
from keras import activations, ops

from keras_tether.layers._tied_layer import TiedLayer

_TRANSPOSED_CONVS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


@keras.saving.register_keras_serializable(package="keras_tether")
class ConvTranspose(TiedLayer):
    """Transposed convolution tied to the kernel of a convolution layer.

    For a `source` convolution that maps `x` to `conv(x, kernel)` (leaving out
    its bias and activation), `ConvTranspose(source)` computes
    `output = activation(conv_transpose(inputs, kernel) + bias)` with the very
    same kernel, read live at every call, and the source's strides, padding,
    dilation rate and data format. Without bias and activation it is the exact
    adjoint of the source's convolution:
    `sum(conv(x) * g) == sum(x * conv_transpose(g))` for every `x` and `g`,
    i.e. it is the gradient of the convolution with respect to its input. It
    maps the source's output space (`filters` channels) back to its input
    space, as the decoder of a tied convolutional autoencoder does. Gradients
    from both layers reach the one kernel. The bias is this layer's own, one
    value per input channel of the source. A LoRA-enabled source is read with
    its low-rank update.

    A strided convolution maps several input sizes to the same output size,
    so the size a transposed convolution should restore is ambiguous. This
    layer restores the spatial size the source was built with: along each
    spatial axis it sets `output_padding` to the remainder that the source's
    convolution dropped. Where the source was built with an unknown spatial
    size (`None`), it uses the Keras default of `keras.ops.conv_transpose`
    (`output_padding=None`) along that axis, which gives `size * strides` for
    `"same"` padding and `(size - 1) * strides + max(kernel_size, strides)`
    (with the dilated kernel size) for `"valid"` padding; the layer is then the
    exact adjoint only for source inputs of that size. A `Conv1D` with
    `padding="causal"` is supported: its left zero padding is cropped off
    again.

    Grouped convolutions (`groups > 1`), quantized sources and transposed
    convolutions as sources are refused.

    Args:
        source: A `keras.layers.Conv1D`, `keras.layers.Conv2D` or
            `keras.layers.Conv3D` (or subclass) with `groups=1`, whose kernel
            of shape `kernel_size + (input_channels, filters)` this layer
            reads. It must be built before this layer is called.
        use_bias: Boolean, whether the layer adds its own bias vector of size
            `input_channels`.
        bias_initializer: Initializer for the bias vector.
        bias_regularizer: Regularizer function applied to the bias vector.
        bias_constraint: Constraint function applied to the bias vector.
        activation: Activation function to use. Defaults to none.
        activity_regularizer: Regularizer function applied to the output.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor shaped like the source's output: `filters` channels
            on the source's channel axis.

    Input shape:
        `(batch_size,) + spatial_shape + (filters,)` for a `"channels_last"`
        source, or `(batch_size, filters) + spatial_shape` for a
        `"channels_first"` source, with as many spatial axes as the source.

    Output shape:
        The source's input shape:
        `(batch_size,) + source_spatial_shape + (input_channels,)` for a
        `"channels_last"` source, or
        `(batch_size, input_channels) + source_spatial_shape` otherwise.

    Example:

    >>> import keras
    >>> from keras_tether.layers import ConvTranspose
    >>> encoder = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    >>> decoder = ConvTranspose(encoder)
    >>> inputs = keras.Input(shape=(7, 7, 3))
    >>> model = keras.Model(inputs, decoder(encoder(inputs)))
    >>> tuple(encoder.output.shape)  # 7 and 8 would both give 4
    (None, 4, 4, 8)
    >>> tuple(model.output.shape)
    (None, 7, 7, 3)
    >>> model.count_params()  # 3*3*3*8 kernel + 8 + 3 biases: the kernel once
    227

    References:
        - [Dumoulin & Visin, 2016](https://arxiv.org/abs/1603.07285)
        - [Masci et al., 2011](https://doi.org/10.1007/978-3-642-21735-7_7)
    """

    source_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)

    def __init__(
        self,
        source: keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D,
        use_bias: bool = True,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        activation=None,
        activity_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            source=source,
            use_bias=use_bias,
            bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer,
            bias_constraint=bias_constraint,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )
        # Like Keras' convolutions: a sequence mask does not survive the
        # change of spatial size.
        self.supports_masking = False
        self.activation = activations.get(activation)
        self.input_spec = keras.layers.InputSpec(ndim=source.rank + 2)

    def build(self, input_shape):
        source = self.source
        kernel_shape = tuple(self._source_kernel().shape)
        filters, input_channels = kernel_shape[-1], kernel_shape[-2]
        channels = input_shape[self._channel_axis]
        if channels is not None and channels != filters:
            raise ValueError(
                f"Layer '{self.name}' transposes the convolution of layer "
                f"'{source.name}', which has {filters} filters, so its input "
                f"must have {filters} channels on axis {self._channel_axis} "
                f"(data_format={source.data_format!r}). Received: "
                f"input_shape={tuple(input_shape)}"
            )
        self.add_own_bias(input_channels)
        self.input_spec = keras.layers.InputSpec(
            ndim=source.rank + 2, axes={self._channel_axis: filters}
        )

    @property
    def kernel(self):
        """The source's kernel, `kernel_size + (input_channels, filters)`."""
        return self._source_kernel()

    @property
    def output_padding(self) -> tuple[int, ...]:
        """The `output_padding` passed to `keras.ops.conv_transpose`.

        One integer per spatial axis, chosen so that the output has the
        spatial size the source was built with (see the class docstring).
        """
        source = self.source
        spatial = self._source_spatial_shape()
        padding = []
        for axis, size in enumerate(spatial):
            kernel = self._dilated_kernel_size(axis)
            stride = source.strides[axis]
            if source.padding == "same":
                if size is None:
                    padding.append(stride - kernel % 2)
                else:
                    steps = math.ceil(size / stride)
                    padding.append(size - (steps - 1) * stride - kernel % 2)
            elif size is None:
                padding.append(max(kernel, stride) - kernel)
            else:
                if source.padding == "causal":
                    size += kernel - 1
                padding.append((size - kernel) % stride)
        return tuple(padding)

    def shared_variables(self) -> list:
        source = self.source
        bias = getattr(source, "bias", None)
        return [w for w in source.weights if w is not bias]

    def call(self, inputs):
        source = self.source
        kernel = ops.cast(self._source_kernel(), self.compute_dtype)
        causal = source.padding == "causal"
        outputs = ops.conv_transpose(
            inputs,
            kernel,
            strides=list(source.strides),
            padding="valid" if causal else source.padding,
            output_padding=self.output_padding,
            data_format=source.data_format,
            dilation_rate=list(source.dilation_rate),
        )
        if causal:
            # The source padded its input on the left; the adjoint crops.
            crop = self._dilated_kernel_size(0) - 1
            if source.data_format == "channels_last":
                outputs = outputs[:, crop:, :]
            else:
                outputs = outputs[:, :, crop:]
        if self.bias is not None:
            if source.data_format == "channels_last":
                bias_shape = (1,) * (source.rank + 1) + (-1,)
            else:
                bias_shape = (1, -1) + (1,) * source.rank
            outputs = ops.add(outputs, ops.reshape(self.bias, bias_shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        source = self.source
        input_channels = tuple(self._source_kernel().shape)[-2]
        if source.data_format == "channels_last":
            spatial = tuple(input_shape[1:-1])
        else:
            spatial = tuple(input_shape[2:])
        sizes = []
        for axis, (size, extra) in enumerate(
            zip(spatial, self.output_padding, strict=True)
        ):
            if size is None:
                sizes.append(None)
                continue
            kernel = self._dilated_kernel_size(axis)
            stride = source.strides[axis]
            if source.padding == "same":
                sizes.append((size - 1) * stride + kernel % 2 + extra)
            elif source.padding == "causal":
                sizes.append((size - 1) * stride + 1 + extra)
            else:
                sizes.append((size - 1) * stride + kernel + extra)
        if source.data_format == "channels_last":
            return (input_shape[0],) + tuple(sizes) + (input_channels,)
        return (input_shape[0], input_channels) + tuple(sizes)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "activation": activations.serialize(self.activation),
            }
        )
        return config

    @property
    def _channel_axis(self) -> int:
        return -1 if self.source.data_format == "channels_last" else 1

    def _dilated_kernel_size(self, axis: int) -> int:
        source = self.source
        return (source.kernel_size[axis] - 1) * source.dilation_rate[axis] + 1

    def _source_spatial_shape(self) -> tuple[int | None, ...]:
        source = self.source
        build_config = source.get_build_config() or {}
        shape = build_config.get("input_shape")
        if shape is None or len(shape) != source.rank + 2:
            return (None,) * source.rank
        if source.data_format == "channels_last":
            return tuple(shape[1:-1])
        return tuple(shape[2:])

    def _check_source(self, source) -> None:
        if isinstance(source, _TRANSPOSED_CONVS):
            raise TypeError(
                "Expected `source` to be a forward convolution "
                "(`keras.layers.Conv1D`, `Conv2D` or `Conv3D`); it is already a "
                "transposed convolution. Tie `ConvTranspose` to the "
                "convolution whose adjoint you need. Received: "
                f"source={source!r} of type {type(source).__name__}"
            )
        super()._check_source(source)
        if source.groups != 1:
            raise ValueError(
                f"Cannot tie to layer '{source.name}': it is a grouped "
                "convolution, and `keras.ops.conv_transpose` has no groups. "
                f"Expected a `source` with groups=1. Received: "
                f"source={source!r} with groups={source.groups}"
            )

    def _source_kernel(self):
        return self.read_source_weight("kernel")
