"""The private Keras structures keras_tether's layers rely on, one function each.

Keras offers no public route for these (see `docs/private-api.md`). Each
function checks the structure it reads and raises `KerasInternalsError`,
naming the Keras version, when Keras has changed it, so that a new Keras
fails loudly here instead of quietly computing something else.
`tests/test_private_api.py` checks each of them against the installed Keras.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

_TRAINABLE_STORE = "trainable_variables"
_NON_TRAINABLE_STORE = "non_trainable_variables"


class KerasInternalsError(RuntimeError):
    """Keras changed a private structure that keras_tether relies on."""


def _changed(what: str) -> KerasInternalsError:
    return KerasInternalsError(
        f"keras_tether cannot work with Keras {keras.__version__}: {what} "
        "This Keras changed a private structure that keras_tether relies on "
        "(listed in keras_tether's docs/private-api.md). Install a Keras "
        "version that keras_tether declares support for, or a keras_tether "
        "release that supports this Keras."
    )


def set_tracked(layer: keras.layers.Layer, variable, index: int | None) -> int:
    """Takes `variable` out of `layer`'s own variables, or puts it back.

    Out, the variable leaves `layer.weights` and the layer's own saving
    (`Layer.save_own_variables` reads the same lists); back, it returns to
    both, at its old place. Keras' tracker lists a layer's own variables in
    two lists (trainable or not) and keeps the ids of the listed ones (to
    track each once); both are kept in step.

    Args:
        layer: A Keras layer that created `variable`.
        variable: One of the layer's own variables.
        index: `None` to take the variable out; otherwise the position at
            which to put it back in the list of its kind (trainable or not,
            after `variable.trainable`).

    Returns:
        The variable's position in its list: where it was taken from, or
        `index`.
    """
    if index is None:
        for trainable in (True, False):
            variables, ids = _tracker_store(layer, trainable)
            position = next((i for i, v in enumerate(variables) if v is variable), None)
            if position is not None:
                del variables[position]
                ids.discard(id(variable))
                index_out = position
                break
        else:
            raise ValueError(
                f"Variable '{variable.path}' is not one of the own variables "
                f"of layer '{layer.name}'."
            )
    else:
        variables, ids = _tracker_store(layer, variable.trainable)
        variables.insert(index, variable)
        ids.add(id(variable))
    # Checked through the public API: the change must show in `weights`.
    shown = any(weight is variable for weight in layer.weights)
    if shown != (index is not None):
        raise _changed(
            f"editing the variable list of layer '{layer.name}' did not "
            f"{'add' if index is not None else 'remove'} variable "
            f"'{variable.path}' in `layer.weights`."
        )
    return index if index is not None else index_out


def _tracker_store(layer: keras.layers.Layer, trainable: bool) -> tuple[list, set]:
    store = _TRAINABLE_STORE if trainable else _NON_TRAINABLE_STORE
    try:
        tracker = layer._tracker
        variables = tracker.config[store][1]
        ids = tracker.stored_ids[store]
    except (AttributeError, KeyError, IndexError, TypeError) as error:
        raise _changed(
            f"layer '{layer.name}' has no variable tracker with a "
            f"{store!r} store ({type(error).__name__}: {error})."
        ) from error
    if not isinstance(variables, list) or not isinstance(ids, set):
        raise _changed(
            f"the {store!r} store of layer '{layer.name}' is a "
            f"{type(variables).__name__} with ids in a {type(ids).__name__}, "
            "not a list with a set."
        )
    if {id(v) for v in variables} != ids:
        raise _changed(
            f"the {store!r} store of layer '{layer.name}' and its set of ids disagree."
        )
    return variables, ids


@contextlib.contextmanager
def weights_added_after_build(layer: keras.layers.Layer) -> Iterator[None]:
    """Lets a built `layer` create variables inside the `with` block.

    Keras locks a layer's tracker once the layer is built; Keras' own
    `Dense.enable_lora` unlocks it the same way to add its LoRA factors.
    """
    try:
        tracker = layer._tracker
        was_locked = bool(tracker.locked)
        unlock, lock = tracker.unlock, tracker.lock
    except AttributeError as error:
        raise _changed(
            f"layer '{layer.name}' has no lockable variable tracker ({error})."
        ) from error
    unlock()
    try:
        yield
    finally:
        if was_locked:
            lock()


def set_parent_path(layer: keras.layers.Layer, parent_path: str | None) -> None:
    """Makes `layer` name its variables under `parent_path`, not the current scope.

    A layer built by its wrapper's `build` would otherwise name its
    variables under the wrapper (`wrapper/dense/kernel`); a wrapper that
    keeps its layer's paths as if unwrapped (`dense/kernel`) gives it the
    wrapper's own parent. Done only while `layer` has no parent path yet.
    """
    try:
        current = layer._parent_path
    except AttributeError as error:
        raise _changed(f"layer '{layer.name}' has no parent path ({error}).") from error
    if current is None:
        layer._parent_path = parent_path
