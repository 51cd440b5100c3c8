"""Inspecting ties, and a tied autoencoder built from reversible layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras

from keras_tether._validation import check_bool, check_positive_int
from keras_tether._walk import all_layers
from keras_tether.layers._reversible_conv import ReversibleConv
from keras_tether.layers._reversible_dense import ReversibleDense

__all__ = [
    "Tie",
    "count_params",
    "list_ties",
    "tied_autoencoder",
]


@dataclass(frozen=True)
class Tie:
    """One tie in a model: a layer that uses its weights in two directions.

    Attributes:
        layer: Name of the layer that owns the tied weights.
        layer_class: Class name of that layer.
        variables: Paths of the weights both directions read.
        shapes: Shapes of those weights, in the same order.
        uses: The directions the layer has been called in so far, out of
            `("forward", "reverse")`. A functional model records both when it
            is built or loaded; a layer inside a custom layer records a
            direction at its first call. Empty for a layer that keeps no
            record (`keras.layers.ReversibleEmbedding`).
    """

    layer: str
    layer_class: str
    variables: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    uses: tuple[str, ...]


def _tied_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [layer for layer in all_layers(model) if _is_tied(layer)]


def _is_tied(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, ReversibleDense | ReversibleConv):
        return True
    return isinstance(layer, keras.layers.ReversibleEmbedding) and layer.tie_weights


def _tied_weights(layer: keras.layers.Layer) -> list:
    # The weight both directions read: a dense or convolution kernel (int8
    # once quantized), or the embeddings matrix.
    return [w for w in layer.weights if w.name in ("kernel", "embeddings")]


def list_ties(model: keras.Model) -> list[Tie]:
    """Lists every tie in `model`, nested models and custom layers included.

    A tie is a layer that owns weights and reads them in two directions: a
    `ReversibleDense`, a `ReversibleConv1D/2D/3D`, or a
    `keras.layers.ReversibleEmbedding` with `tie_weights=True`. Each is listed
    once, however many times it is called.

    Args:
        model: A Keras model (functional, `Sequential` or subclassed).

    Returns:
        A list of `Tie` records, in layer order.

    Example:

    >>> from keras_tether import ties
    >>> model = ties.tied_autoencoder(input_dim=6, units=[4, 2])
    >>> [(t.layer, t.uses) for t in ties.list_ties(model)]
    [('tied_dense_0', ('forward', 'reverse')), ('tied_dense_1', ('forward', 'reverse'))]
    """
    _check_model(model)
    records = []
    for layer in _tied_layers(model):
        weights = _tied_weights(layer)
        uses = getattr(layer, "uses", ())
        records.append(
            Tie(
                layer=layer.name,
                layer_class=type(layer).__name__,
                variables=tuple(w.path for w in weights),
                shapes=tuple(tuple(int(d) for d in w.shape) for w in weights),
                uses=tuple(uses),
            )
        )
    return records


def count_params(model: keras.Model) -> int:
    """Counts the scalars in `model`'s weights, each shared variable once.

    Equal to `model.count_params()`; provided so that tools can count a model
    without building a summary.
    """
    _check_model(model)
    unique = {id(w): w for w in model.weights}
    total = 0
    for weight in unique.values():
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total


def tied_autoencoder(
    input_dim: int,
    units: Sequence[int],
    activation="relu",
    output_activation=None,
    use_bias: bool = True,
    name: str = "tied_autoencoder",
) -> keras.Model:
    """Builds a dense autoencoder whose decoder reads the encoder's kernels.

    The encoder is a stack of `ReversibleDense` layers with `units`; the
    decoder calls the same layers again, innermost first, with
    `reverse=True`, so each kernel serves both halves and the autoencoder has
    half the kernel parameters of its untied twin. Each layer has a forward
    bias (size `units[i]`) and a reverse bias (the size of its input).

    Args:
        input_dim: Positive integer, the size of the input vectors.
        units: Non-empty sequence of positive integers, the encoder's layer
            sizes from the input inwards (e.g. `[256, 64]`).
        activation: Activation of every hidden layer (encoder layers and all
            decoder layers but the last).
        output_activation: Activation of the last decoder layer.
        use_bias: Boolean, whether every layer has its forward and reverse
            biases.
        name: String, the model's name.

    Returns:
        A functional `keras.Model` mapping `(batch, input_dim)` to
        `(batch, input_dim)`. Its layers are named `tied_dense_0`,
        `tied_dense_1`, ... from the input inwards; each is called twice.

    Example:

    >>> from keras_tether import ties
    >>> model = ties.tied_autoencoder(input_dim=784, units=[256, 64])
    >>> tuple(model.outputs[0].shape)
    (None, 784)
    >>> model.count_params()  # 784*256 + 256*64 kernels once, plus 4 biases
    218448
    """
    check_positive_int(input_dim, "input_dim")
    if isinstance(units, str | bytes) or not isinstance(units, Sequence):
        raise TypeError(
            "Expected `units` to be a sequence of positive integers. "
            f"Received: units={units!r}"
        )
    if len(units) == 0:
        raise ValueError(
            "Expected `units` to hold at least one layer size. Received: units=[]"
        )
    for size in units:
        check_positive_int(size, "units")
    use_bias = check_bool(use_bias, "use_bias")
    inputs = keras.Input(shape=(input_dim,))
    layers = [
        ReversibleDense(
            size,
            activation=activation,
            use_bias=use_bias,
            reverse_activation=output_activation if index == 0 else activation,
            reverse_use_bias=use_bias,
            name=f"tied_dense_{index}",
        )
        for index, size in enumerate(units)
    ]
    x = inputs
    for layer in layers:
        x = layer(x)
    for layer in reversed(layers):
        x = layer(x, reverse=True)
    return keras.Model(inputs, x, name=name)


def _check_model(model) -> None:
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Expected `model` to be a Keras model. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
