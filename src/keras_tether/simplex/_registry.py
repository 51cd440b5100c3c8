"""Look-up and (de)serialization of simplex maps."""

from typing import Any

import keras

from keras_tether.simplex._base import SimplexMap
from keras_tether.simplex._entmax import Entmax15
from keras_tether.simplex._gumbel_softmax import GumbelSoftmax
from keras_tether.simplex._relu_normalized import ReluNormalized
from keras_tether.simplex._softmax import Softmax
from keras_tether.simplex._sparsemax import Sparsemax

_MAPS: dict[str, type[SimplexMap]] = {
    cls.name: cls
    for cls in (Softmax, Sparsemax, Entmax15, ReluNormalized, GumbelSoftmax)
}


def serialize(simplex_map: SimplexMap) -> dict[str, Any]:
    """Returns the config dict of a simplex map, as Keras saves it.

    Args:
        simplex_map: A `SimplexMap`.

    Returns:
        A JSON-compatible dict that `deserialize` and `get` turn back into an
        equal map.

    Example:

    >>> from keras_tether import simplex
    >>> config = simplex.serialize(simplex.Softmax(temperature=0.5))
    >>> config["registered_name"], config["config"]
    ('keras_tether>Softmax', {'temperature': 0.5})
    """
    if not isinstance(simplex_map, SimplexMap):
        raise TypeError(
            "Expected `simplex_map` to be a `SimplexMap`. "
            f"Received: simplex_map={simplex_map!r} of type "
            f"{type(simplex_map).__name__}"
        )
    return keras.saving.serialize_keras_object(simplex_map)


def deserialize(config: dict[str, Any]) -> SimplexMap:
    """Returns the simplex map described by a config dict.

    Args:
        config: A dict as returned by `serialize`. A dict with only
            `class_name` (such as `"Sparsemax"`) and `config` is accepted too.

    Returns:
        A `SimplexMap`.

    Example:

    >>> from keras_tether import simplex
    >>> simplex.deserialize(simplex.serialize(simplex.Entmax15()))
    Entmax15()
    """
    if not isinstance(config, dict):
        raise TypeError(
            "Expected `config` to be a dict, as returned by `serialize`. "
            f"Received: config={config!r} of type {type(config).__name__}"
        )
    simplex_map = keras.saving.deserialize_keras_object(
        config, custom_objects={cls.__name__: cls for cls in _MAPS.values()}
    )
    if not isinstance(simplex_map, SimplexMap):
        raise ValueError(
            "Received an invalid value for `config`, expected the config of a "
            f"`SimplexMap`. Received: config={config!r}"
        )
    return simplex_map


def get(
    identifier: str | dict[str, Any] | SimplexMap | None,
    temperature: float | None = None,
) -> SimplexMap:
    """Returns a simplex map from a name, a config dict or a map.

    Args:
        identifier: One of the names `"softmax"`, `"sparsemax"`,
            `"entmax15"`, `"relu_normalized"` or `"gumbel_softmax"` (in any
            case), giving the map with default arguments; a config dict as
            returned by `serialize`; a `SimplexMap`, returned as is; or
            `None`, giving `Softmax()`.
        temperature: Optional positive number. If set, the map is returned
            with this temperature instead of its own; only maps that have
            one (`"softmax"`, `"gumbel_softmax"`) accept it.

    Returns:
        A `SimplexMap`.

    Example:

    >>> from keras_tether import simplex
    >>> simplex.get("Sparsemax")
    Sparsemax()
    >>> simplex.get(None)
    Softmax(temperature=1.0)
    >>> simplex.get("softmax", temperature=0.5)
    Softmax(temperature=0.5)
    """
    simplex_map = _get(identifier)
    if temperature is None:
        return simplex_map
    config = simplex_map.get_config()
    if "temperature" not in config:
        raise ValueError(
            "Received an invalid value for `temperature`: the "
            f"{type(simplex_map).__name__} simplex map has no temperature "
            "(only 'softmax' and 'gumbel_softmax' do). Received: "
            f"temperature={temperature!r} with simplex={identifier!r}"
        )
    return type(simplex_map).from_config({**config, "temperature": temperature})


def _get(identifier: str | dict[str, Any] | SimplexMap | None) -> SimplexMap:
    if identifier is None:
        return Softmax()
    if isinstance(identifier, SimplexMap):
        return identifier
    if isinstance(identifier, str):
        cls = _MAPS.get(identifier.lower())
        if cls is None:
            raise ValueError(
                "Received an invalid value for `simplex`, expected one of "
                f"{sorted(_MAPS)}. Received: simplex={identifier!r}"
            )
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise TypeError(
        "Expected `simplex` to be the name of a simplex map, a `SimplexMap`, a "
        "config dict or None. "
        f"Received: simplex={identifier!r} of type {type(identifier).__name__}"
    )
