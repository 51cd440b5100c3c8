"""Convolutions that can also be called in reverse: their exact adjoint."""

from __future__ import annotations

import functools
import math

import keras
from keras import activations, constraints, initializers, ops, regularizers

from keras_tether._validation import check_bool, keras_identifiers
from keras_tether.layers._reversible_sites import CallSites, ReversibleCalls

_DOC = """{rank}D convolution that can also map back with its adjoint.

    Called as usual, `layer(x)` is exactly `keras.layers.{base}`. Called with
    `reverse=True`, `layer(y, reverse=True)` applies the transposed
    convolution with the very same kernel, strides, padding and dilation
    rate, then its own reverse bias (one value per input channel) and
    `reverse_activation`. Without biases and activations the two directions
    are adjoint: `sum(conv(x) * y) == sum(x * conv(y, reverse=True))` for
    every `x` and `y`; the reverse direction is the gradient of the forward
    convolution with respect to its input. Its output is shaped like the
    forward input.

    A strided convolution maps several input sizes to one output size. The
    layer restores the spatial size it was built with, which Keras records
    and restores with the model. A layer built with an unknown spatial size
    (`None`) along a strided axis refuses `reverse=True` with a message.

    One layer owns the kernel and is called at both sites, so Keras keeps the
    tie through `clone_model`, `Model.from_config`, `.keras` files and
    `save_weights`, and the kernel is counted once. Call both directions at
    the same level (both in the functional model, or both inside the one
    custom layer that creates the layer); a layer called from two levels
    would come back as two copies when the model is rebuilt, so such a call
    raises a `ValueError`. Grouped convolutions (`groups > 1`) are refused.

    Args:
        filters, kernel_size, strides, padding, data_format, dilation_rate,
            activation, use_bias, kernel_initializer, bias_initializer,
            kernel_regularizer, bias_regularizer, activity_regularizer,
            kernel_constraint, bias_constraint, lora_rank, lora_alpha: as for
            `keras.layers.{base}` (`groups` must be 1).
        reverse_activation: Activation function of the reverse direction.
            Defaults to none.
        reverse_use_bias: Boolean, whether the reverse direction adds its own
            bias vector, one value per input channel.
        reverse_bias_initializer: Initializer for the reverse bias vector.
        reverse_bias_regularizer: Regularizer function applied to the reverse
            bias.
        reverse_bias_constraint: Constraint function applied to the reverse
            bias.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: The input tensor.
        reverse: Boolean. If `True`, apply the adjoint convolution, mapping
            `filters` channels back to the input channels. Defaults to
            `False`.

    Input shape:
        As `keras.layers.{base}`; with `reverse=True`, the forward output
        shape (`filters` channels).

    Output shape:
        As `keras.layers.{base}`; with `reverse=True`, the shape of the input
        the layer was built with (batch size and unknown sizes aside).

    Example:

    >>> import keras
    >>> from keras_tether.layers import {name}
    >>> conv = {name}(4, 3, strides=2, padding="same")
    >>> inputs = keras.Input(shape={example_shape})
    >>> outputs = conv(conv(inputs), reverse=True)
    >>> tuple(keras.Model(inputs, outputs).output.shape)
    {example_output}

    References:
        - [Dumoulin & Visin, 2016](https://arxiv.org/abs/1603.07285)
        - [Masci et al., 2011](https://doi.org/10.1007/978-3-642-21735-7_7)
    """


class ReversibleConv(ReversibleCalls):
    """The reverse direction shared by `ReversibleConv1D`, `2D` and `3D`."""

    def _reversible_init(
        self,
        reverse_activation,
        reverse_use_bias,
        reverse_bias_initializer,
        reverse_bias_regularizer,
        reverse_bias_constraint,
    ) -> None:
        if self.groups != 1:
            raise ValueError(
                f"`{type(self).__name__}` has no reverse direction for grouped "
                "convolutions: `keras.ops.conv_transpose` has no groups. "
                f"Expected groups=1. Received: groups={self.groups}"
            )
        self.reverse_activation = activations.get(reverse_activation)
        self.reverse_use_bias = check_bool(reverse_use_bias, "reverse_use_bias")
        self.reverse_bias_initializer = initializers.get(reverse_bias_initializer)
        self.reverse_bias_regularizer = regularizers.get(reverse_bias_regularizer)
        self.reverse_bias_constraint = constraints.get(reverse_bias_constraint)
        self._call_sites = CallSites(self)
        self._uses: tuple[str, ...] = ()

    def build(self, input_shape):
        super().build(input_shape)
        shape = tuple(input_shape)
        if self.data_format == "channels_last":
            self.input_channels = int(shape[-1])
            self.input_spatial_shape = shape[1:-1]
        else:
            self.input_channels = int(shape[1])
            self.input_spatial_shape = shape[2:]
        if self.reverse_use_bias:
            self.reverse_bias = self.add_weight(
                name="reverse_bias",
                shape=(self.input_channels,),
                initializer=self.reverse_bias_initializer,
                regularizer=self.reverse_bias_regularizer,
                constraint=self.reverse_bias_constraint,
            )
        else:
            self.reverse_bias = None
        # The reverse direction takes `filters` channels; `__call__` checks
        # the channels of each direction instead.
        self.input_spec = keras.InputSpec(ndim=self.rank + 2)

    def _reverse_windows(self) -> list[tuple[int, int, int]]:
        """How the reverse output is cut from a valid transposed convolution.

        A transposed convolution with `padding="valid"` is the exact adjoint
        of the forward convolution applied to the forward input padded as
        Keras pads it. For each spatial axis this gives `(before, after,
        zeros)`: the padding the forward direction added before and after the
        input, cropped off again, and the input entries past the last window,
        which no output reads and which come back as zeros.
        """
        windows = []
        for axis, size in enumerate(self.input_spatial_shape):
            kernel = self._dilated_kernel_size(axis)
            stride = self.strides[axis]
            if size is None and stride != 1:
                raise ValueError(
                    f"Layer '{self.name}' was built with an unknown size along "
                    f"spatial axis {axis} and strides={self.strides}: several "
                    "input sizes give the same output size, so the size to "
                    "restore with `reverse=True` is ambiguous. Build it with a "
                    "known spatial size (e.g. `keras.Input(shape=(28, 28, 1))`). "
                    f"Received: input_spatial_shape={self.input_spatial_shape}"
                )
            if self.padding == "same" and size is None:
                before = (kernel - 1) // 2
                windows.append((before, kernel - 1 - before, 0))
                continue
            if size is None:
                before = kernel - 1 if self.padding == "causal" else 0
                windows.append((before, 0, 0))
                continue
            if self.padding == "same":
                steps = math.ceil(size / stride)
                before = max((steps - 1) * stride + kernel - size, 0) // 2
            elif self.padding == "causal":
                steps, before = (size - 1) // stride + 1, kernel - 1
            else:
                steps, before = (size - kernel) // stride + 1, 0
            # The length of Keras' valid transposed convolution.
            full = (steps - 1) * stride + max(kernel, stride)
            after = max(full - before - size, 0)
            windows.append((before, after, size - (full - before - after)))
        return windows

    def call(self, inputs, reverse=False):
        self._call_sites.check(self, inputs)
        if not reverse:
            return super().call(inputs)
        same = self._same_padding_is_adjoint()
        outputs = ops.conv_transpose(
            inputs,
            ops.cast(self.kernel, self.compute_dtype),
            strides=list(self.strides),
            padding="same" if same else "valid",
            data_format=self.data_format,
            dilation_rate=list(self.dilation_rate),
        )
        if same:
            return self._reverse_bias_and_activation(outputs)
        windows = self._reverse_windows()
        spatial = [slice(before, -after or None) for before, after, _ in windows]
        zeros = [(0, extra) for _, _, extra in windows]
        if self.data_format == "channels_last":
            outputs = outputs[(slice(None), *spatial, slice(None))]
            widths = [(0, 0), *zeros, (0, 0)]
        else:
            outputs = outputs[(slice(None), slice(None), *spatial)]
            widths = [(0, 0), (0, 0), *zeros]
        if any(extra for _, extra in zeros):
            outputs = ops.pad(outputs, widths)
        return self._reverse_bias_and_activation(outputs)

    def _same_padding_is_adjoint(self) -> bool:
        """Whether a `"same"` transposed convolution is the exact adjoint.

        It is when the forward padding is `"same"` and every spatial size is
        a multiple of its stride: the transposed convolution then restores the
        forward input's size and pads as the forward direction did, with no
        crop. It measured faster than the valid form and its crop on every
        backend, and is exact on TensorFlow and JAX with every supported Keras
        version. Keras' torch route pads a strided `"same"` transposed
        convolution otherwise before Keras 3.15 (checked on 3.13: not the
        adjoint), so torch with an older Keras keeps the valid form.
        """
        if self.padding != "same":
            return False
        if keras.backend.backend() == "torch" and _keras_release() < (3, 15):
            return False
        return all(
            stride == 1 or (size is not None and size % stride == 0)
            for size, stride in zip(self.input_spatial_shape, self.strides, strict=True)
        )

    def _reverse_bias_and_activation(self, outputs):
        if self.reverse_bias is not None:
            if self.data_format == "channels_last":
                bias_shape = (1,) * (self.rank + 1) + (-1,)
            else:
                bias_shape = (1, -1) + (1,) * self.rank
            outputs = ops.add(outputs, ops.reshape(self.reverse_bias, bias_shape))
        if self.reverse_activation is not None:
            outputs = self.reverse_activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape, reverse=False):
        if not reverse:
            return super().compute_output_shape(input_shape)
        if self.data_format == "channels_last":
            spatial = tuple(input_shape[1:-1])
        else:
            spatial = tuple(input_shape[2:])
        self._reverse_windows()  # refuses a size it cannot restore
        sizes = []
        for axis, (size, built) in enumerate(
            zip(spatial, self.input_spatial_shape, strict=True)
        ):
            if built is not None or size is None:
                sizes.append(built)
            elif self.padding == "valid":
                sizes.append(size + self._dilated_kernel_size(axis) - 1)
            else:
                sizes.append(size)
        if self.data_format == "channels_last":
            return (input_shape[0], *sizes, self.input_channels)
        return (input_shape[0], self.input_channels, *sizes)

    def compute_output_spec(self, inputs, reverse=False):
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape, reverse=reverse),
            dtype=self.compute_dtype,
        )

    def compute_mask(self, inputs, mask=None):
        # Like Keras' convolutions: a mask does not survive the change of
        # spatial size.
        return None

    # The reverse bias is stored after what a Keras convolution stores, so
    # the entries of a plain convolution keep their places.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built and self.reverse_bias is not None:
            store[str(1 + int(self.use_bias))] = self.reverse_bias

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and self.reverse_bias is not None:
            self.reverse_bias.assign(store[str(1 + int(self.use_bias))])

    def quantize(self, mode=None, type_check=True, config=None):
        raise NotImplementedError(
            f"Layer '{self.name}' ({type(self).__name__}) cannot be quantized: "
            f"its reverse direction has no quantized form. Received: mode={mode!r}"
        )

    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _dilated_kernel_size(self, axis: int) -> int:
        return (self.kernel_size[axis] - 1) * self.dilation_rate[axis] + 1

    def _check_features(self, inputs, reverse: bool) -> None:
        expected = self.filters if reverse else self.input_channels
        shape = getattr(inputs, "shape", None)
        if shape is None or len(shape) != self.rank + 2:
            return
        channels = shape[self._channel_axis()]
        if channels is not None and int(channels) != expected:
            what = "`filters`" if reverse else "input channels"
            direction = "`reverse=True`" if reverse else "the forward direction"
            raise ValueError(
                f"Layer '{self.name}' expects inputs with {expected} channels "
                f"({what}) on axis {self._channel_axis()} in {direction} "
                f"(data_format={self.data_format!r}). Received: "
                f"inputs.shape={tuple(shape)}"
            )


@functools.cache
def _keras_release() -> tuple[int, int]:
    """The installed Keras' major and minor version numbers."""
    major, minor = keras.version().split(".")[:2]
    return int(major), int(minor)


def _conv_init(base):
    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        reverse_activation=None,
        reverse_use_bias=True,
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
        **kwargs,
    ):
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
        base.__init__(
            self,
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=identifiers["activation"],
            use_bias=use_bias,
            kernel_initializer=identifiers["kernel_initializer"],
            bias_initializer=identifiers["bias_initializer"],
            kernel_regularizer=identifiers["kernel_regularizer"],
            bias_regularizer=identifiers["bias_regularizer"],
            activity_regularizer=identifiers["activity_regularizer"],
            kernel_constraint=identifiers["kernel_constraint"],
            bias_constraint=identifiers["bias_constraint"],
            **kwargs,
        )
        self._reversible_init(
            identifiers["reverse_activation"],
            reverse_use_bias,
            identifiers["reverse_bias_initializer"],
            identifiers["reverse_bias_regularizer"],
            identifiers["reverse_bias_constraint"],
        )

    return __init__


@keras.saving.register_keras_serializable(package="keras_tether")
class ReversibleConv1D(ReversibleConv, keras.layers.Conv1D):
    __init__ = _conv_init(keras.layers.Conv1D)


@keras.saving.register_keras_serializable(package="keras_tether")
class ReversibleConv2D(ReversibleConv, keras.layers.Conv2D):
    __init__ = _conv_init(keras.layers.Conv2D)


@keras.saving.register_keras_serializable(package="keras_tether")
class ReversibleConv3D(ReversibleConv, keras.layers.Conv3D):
    __init__ = _conv_init(keras.layers.Conv3D)


ReversibleConv1D.__doc__ = _DOC.format(
    rank=1,
    base="Conv1D",
    name="ReversibleConv1D",
    example_shape="(9, 3)",
    example_output="(None, 9, 3)",
)
ReversibleConv2D.__doc__ = _DOC.format(
    rank=2,
    base="Conv2D",
    name="ReversibleConv2D",
    example_shape="(7, 7, 3)",
    example_output="(None, 7, 7, 3)",
)
ReversibleConv3D.__doc__ = _DOC.format(
    rank=3,
    base="Conv3D",
    name="ReversibleConv3D",
    example_shape="(5, 5, 5, 2)",
    example_output="(None, 5, 5, 5, 2)",
)
