"""Working with ties: transforms, inspection, repair and a tied autoencoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras

from keras_tether._transforms import (
    get_transform,
    register_transform,
    registered_transforms,
)
from keras_tether._validation import check_bool, check_positive_int
from keras_tether._walk import all_layers
from keras_tether.layers._dense_transpose import DenseTranspose
from keras_tether.layers._tied_layer import TiedLayer

__all__ = [
    "Tie",
    "count_params",
    "get_transform",
    "list_ties",
    "register_transform",
    "registered_transforms",
    "retie",
    "tied_autoencoder",
]


@dataclass(frozen=True)
class Tie:
    """One tie in a model: which layer reads which variables of which layer.

    Attributes:
        layer: Name of the tied layer.
        layer_class: Class name of the tied layer.
        source: Name of the layer that owns the shared variables.
        source_class: Class name of the source layer.
        variables: Paths of the shared variables.
        shapes: Shapes of the shared variables, in the same order.
        transform: Name of the transform applied to the shared weight, or
            `None` when the layer does not take one.
        source_in_model: Whether the source layer is one of the model's own
            layers (otherwise the tied layer carries it alone).
    """

    layer: str
    layer_class: str
    source: str
    source_class: str
    variables: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    transform: str | None
    source_in_model: bool


def _tied_layers(model) -> list[TiedLayer]:
    return [layer for layer in all_layers(model) if isinstance(layer, TiedLayer)]


def list_ties(model: keras.Model) -> list[Tie]:
    """Lists every tie in `model`, nested models included.

    Args:
        model: A Keras model (functional, `Sequential` or subclassed).

    Returns:
        A list of `Tie` records, in layer order.

    Example:

    >>> import keras
    >>> from keras_tether import ties
    >>> model = ties.tied_autoencoder(input_dim=6, units=[4, 2])
    >>> [(t.layer, t.source, t.transform) for t in ties.list_ties(model)]
    [('decoder_1', 'encoder_1', 'transpose'), ('decoder_0', 'encoder_0', 'transpose')]
    """
    _check_model(model)
    own = {id(layer) for layer in all_layers(model)}
    records = []
    for layer in _tied_layers(model):
        shared = layer.shared_variables() if layer.source.built else []
        records.append(
            Tie(
                layer=layer.name,
                layer_class=type(layer).__name__,
                source=layer.source.name,
                source_class=type(layer.source).__name__,
                variables=tuple(v.path for v in shared),
                shapes=tuple(tuple(int(d) for d in v.shape) for v in shared),
                transform=getattr(layer, "transform", None),
                source_in_model=id(layer.source) in own,
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


def retie(model: keras.Model) -> list[str]:
    """Binds every tied layer of `model` to the source layer of `model`.

    Keras rebuilds the layers of a model when it clones it or loads it from a
    config. Tied layers normally find their new source on their own; when a
    layer cannot decide (it then refuses to run with a clear error), `retie`
    settles it by name within `model`.

    Args:
        model: The model that holds both the tied layers and their sources.

    Returns:
        The names of the layers that were re-bound.

    Raises:
        ValueError: if a tied layer's source name matches no layer, or more
            than one layer, of `model`.
    """
    _check_model(model)
    rebound = []
    for layer in _tied_layers(model):
        if not layer.tie_pending:
            continue
        name = layer._pending_source_name
        cls = type(layer.source)
        matches = [
            candidate
            for candidate in all_layers(model)
            if type(candidate) is cls and candidate.name == name
        ]
        if len(matches) != 1:
            raise ValueError(
                f"Cannot re-tie layer '{layer.name}': expected exactly one "
                f"{cls.__name__} layer named '{name}' in model '{model.name}', "
                f"found {len(matches)}."
            )
        layer._bind(matches[0])
        rebound.append(layer.name)
    return rebound


def tied_autoencoder(
    input_dim: int,
    units: Sequence[int],
    activation="relu",
    output_activation=None,
    use_bias: bool = True,
    name: str = "tied_autoencoder",
) -> keras.Sequential:
    """Builds a dense autoencoder whose decoder mirrors the encoder, tied.

    The encoder is a stack of `Dense` layers with `units`; the decoder walks
    back through them with a `DenseTranspose` per encoder layer, so the
    autoencoder has half the kernel parameters of its untied twin.

    Args:
        input_dim: Positive integer, the size of the input vectors.
        units: Non-empty sequence of positive integers, the encoder's layer
            sizes from the input inwards (e.g. `[256, 64]`).
        activation: Activation of every hidden layer (encoder layers and all
            decoder layers but the last).
        output_activation: Activation of the last decoder layer.
        use_bias: Boolean, whether every layer has its own bias.
        name: String, the model's name.

    Returns:
        A built `keras.Sequential` model mapping `(batch, input_dim)` to
        `(batch, input_dim)`. Its encoder layers are named `encoder_0`,
        `encoder_1`, ... and its decoder layers `decoder_...` with the index of
        the encoder layer they are tied to.

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
    layers: list[keras.layers.Layer] = [keras.Input(shape=(input_dim,))]
    encoders = []
    for index, size in enumerate(units):
        encoder = keras.layers.Dense(
            size, activation=activation, use_bias=use_bias, name=f"encoder_{index}"
        )
        encoders.append(encoder)
        layers.append(encoder)
    for index in reversed(range(len(encoders))):
        last = index == 0
        layers.append(
            DenseTranspose(
                encoders[index],
                activation=output_activation if last else activation,
                use_bias=use_bias,
                name=f"decoder_{index}",
            )
        )
    return keras.Sequential(layers, name=name)


def _check_model(model) -> None:
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Expected `model` to be a Keras model. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
