"""Working with ties: transforms, inspection, repair and a tied autoencoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    "clone_model",
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
        variables: Paths of the shared variables (none while pending).
        shapes: Shapes of the shared variables, in the same order.
        transform: Name of the transform applied to the shared weight, or
            `None` when the layer does not take one.
        source_in_model: Whether the source layer is one of the model's own
            layers (otherwise the tied layer carries it alone).
        pending: Whether the tie is pending: the layer was rebuilt and has not
            been bound to its source yet, so it refuses to run (see `retie`).
    """

    layer: str
    layer_class: str
    source: str
    source_class: str
    variables: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    transform: str | None
    source_in_model: bool
    pending: bool = False


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
        layer.bind_within(model)  # what the model's first call would bind
        bound = layer.source.built and not layer.tie_pending
        shared = layer.shared_variables() if bound else []
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
                pending=layer.tie_pending,
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


def retie(
    model: keras.Model, sources: Mapping[str, keras.layers.Layer] | None = None
) -> list[str]:
    """Binds the pending ties of `model`, by name inside `model` or as given.

    A tied layer rebuilt from a config (`keras.models.clone_model`,
    `Model.from_config`, a `.keras` file) binds to its source on its own when
    it can do so exactly; otherwise its tie is pending and it refuses to run.
    `retie` binds every pending tie to the one layer of `model` (nested
    models included) with the source's name and class. A tied layer whose
    source is not part of `model` (a decoder saved or cloned alone) is bound
    through `sources`.

    Args:
        model: The model that holds the tied layers.
        sources: Optional dict mapping a tied layer's name to the layer it
            must be tied to. These ties are bound as given, pending or not;
            the source may live outside `model`.

    Returns:
        The names of the layers that were bound, in layer order.

    Raises:
        ValueError: if a key of `sources` names no tied layer of `model`, or a
            pending tie's source name matches no layer, or more than one
            layer, of `model`. Nothing is bound then.
        TypeError: if a value of `sources` is not a layer of an accepted type.

    Example:

    >>> import keras
    >>> from keras_tether import ties
    >>> from keras_tether.layers import DenseTranspose
    >>> encoder = keras.layers.Dense(2, name="encoder")
    >>> encoder.build((None, 4))
    >>> decoder_model = keras.Sequential(
    ...     [keras.Input((2,)), DenseTranspose(encoder, name="decoder")]
    ... )
    >>> copy = keras.models.clone_model(decoder_model)  # source left behind
    >>> ties.retie(copy, sources={"decoder": encoder})
    ['decoder']
    >>> copy.get_layer("decoder").source is encoder
    True
    """
    _check_model(model)
    tied = _tied_layers(model)
    sources = _check_sources(sources, tied, model)
    for layer in tied:
        if layer.tie_pending and layer.name not in sources:
            _check_unique_source(layer, model)
    rebound = []
    for layer in tied:
        if layer.name in sources:
            layer.bind(sources[layer.name])
        elif not (layer.tie_pending and layer.bind_within(model)):
            continue
        rebound.append(layer.name)
    return rebound


def clone_model(
    model: keras.Model,
    input_tensors=None,
    clone_function=None,
    call_function=None,
    recursive: bool = False,
    **kwargs,
) -> keras.Model:
    """Clones `model` like `keras.models.clone_model`, keeping every tie.

    Takes the arguments of `keras.models.clone_model` and returns the same
    clone, except that each tied layer of the clone is tied to the clone of
    its source, whatever the layout: a decoder that is not downstream of its
    encoder, a decode-then-encode stack, nested models in any order. A tied
    layer whose source is not part of `model` stays tied to that same source.
    A pending tie stays pending.

    `keras.models.clone_model` alone binds a tied layer only when its source
    is upstream of it in the clone, and otherwise leaves the tie pending.

    Args:
        model: The model to clone.
        input_tensors: As in `keras.models.clone_model`.
        clone_function: As in `keras.models.clone_model`. It may return a new
            tied layer; its tie is then set to the clone of its source.
        call_function: As in `keras.models.clone_model`.
        recursive: As in `keras.models.clone_model`.
        **kwargs: Passed on to `keras.models.clone_model`.

    Returns:
        The clone: new layers with new (freshly initialized) variables, and
        ties within it.

    Raises:
        ValueError: if a nested model's clone does not hold the same layers
            as the original (a `clone_function` that changes a nested model),
            so that ties inside it cannot be matched.

    Example:

    >>> import keras
    >>> from keras_tether import ties
    >>> from keras_tether.layers import DenseTranspose
    >>> encoder = keras.layers.Dense(2, name="encoder")
    >>> decoder = DenseTranspose(encoder, name="decoder")
    >>> x, z = keras.Input((4,)), keras.Input((2,))
    >>> code = encoder(x)
    >>> model = keras.Model([z, x], [decoder(z), code])  # not downstream
    >>> clone = ties.clone_model(model)
    >>> clone.get_layer("decoder").source is clone.get_layer("encoder")
    True
    """
    _check_model(model)
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    base = clone_function or _clone_layer

    def clone_and_record(layer):
        new = base(layer)
        pairs.append((layer, new))
        return new

    # Keras clones a subclassed model from its config, and takes no
    # `clone_function` for it.
    graph = _is_graph_model(model)
    clone = keras.models.clone_model(
        model,
        input_tensors=input_tensors,
        clone_function=clone_and_record if graph else clone_function,
        call_function=call_function,
        recursive=recursive,
        **kwargs,
    )
    counterpart: dict[int, keras.layers.Layer] = {}
    for original, new in pairs:
        _match_layers(original, new, counterpart)
    if not pairs:
        # A subclassed model is rebuilt from its config, not layer by layer.
        _match_layers(model, clone, counterpart)
    for layer in _tied_layers(model):
        new = counterpart.get(id(layer))
        if not isinstance(new, TiedLayer) or layer.tie_pending:
            continue
        new.bind(counterpart.get(id(layer.source), layer.source))
    return clone


def _is_graph_model(model) -> bool:
    """Whether Keras clones `model` layer by layer (Sequential or functional)."""
    return isinstance(model, keras.Sequential) or any(
        cls.__name__ == "Functional" and cls.__module__.startswith("keras.")
        for cls in type(model).__mro__
    )


def _clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())


def _match_layers(original, new, counterpart: dict) -> None:
    """Maps `original` and its nested layers onto `new`'s, position by position."""
    counterpart[id(original)] = new
    inner_original = all_layers(original)
    inner_new = all_layers(new)
    if not inner_original:
        return
    matched = len(inner_original) == len(inner_new) and all(
        type(a) is type(b) and a.name == b.name
        for a, b in zip(inner_original, inner_new, strict=False)
    )
    if not matched:
        if not any(isinstance(x, TiedLayer) for x in inner_original):
            return
        raise ValueError(
            f"Cannot keep the ties inside '{original.name}': its clone does not "
            "hold the same layers in the same order, so tied layers cannot be "
            "matched to their sources. Clone it with `recursive=True`, or with "
            "a `clone_function` that keeps nested models' layers."
        )
    for a, b in zip(inner_original, inner_new, strict=True):
        counterpart.setdefault(id(a), b)


def _check_sources(sources, tied, model) -> dict:
    if sources is None:
        return {}
    if not isinstance(sources, Mapping):
        raise TypeError(
            "Expected `sources` to be a dict mapping tied layer names to source "
            f"layers. Received: sources={sources!r} of type "
            f"{type(sources).__name__}"
        )
    names = [layer.name for layer in tied]
    for name, source in sources.items():
        if name not in names:
            raise ValueError(
                f"Received an invalid key in `sources`: model '{model.name}' has "
                f"no tied layer named {name!r}. Its tied layers are {names}. "
                f"Received: sources={dict(sources)!r}"
            )
        if not isinstance(source, keras.layers.Layer):
            raise TypeError(
                f"Expected `sources[{name!r}]` to be a Keras layer. Received: "
                f"{source!r} of type {type(source).__name__}"
            )
    return dict(sources)


def _check_unique_source(tied: TiedLayer, model) -> None:
    name = tied.pending_source_name
    cls = type(tied.source)
    count = sum(
        1
        for candidate in all_layers(model)
        if type(candidate) is cls and candidate.name == name
    )
    if count != 1:
        raise ValueError(
            f"Cannot re-tie layer '{tied.name}': expected exactly one "
            f"{cls.__name__} layer named '{name}' in model '{model.name}', "
            f"found {count}. Name its source explicitly: "
            f"`retie(model, sources={{'{tied.name}': source_layer}})`."
        )


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
