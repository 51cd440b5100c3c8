"""Guards on every private Keras structure keras_tether relies on.

Each test checks, against the installed Keras, the structure one function of
`keras_tether._keras_internals` reads or edits, so that a Keras that changes
it fails here with a message that says what changed. The last test checks
that `docs/private-api.md` lists every private Keras name the source uses.
"""

import pathlib
import re

import keras
import numpy as np
import pytest

from keras_tether import _keras_internals
from keras_tether._keras_internals import (
    KerasInternalsError,
    set_parent_path,
    set_tracked,
    weights_added_after_build,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERAS = f"Keras {keras.__version__}"


def _built_dense(name):
    dense = keras.layers.Dense(3, name=name)
    dense.build((None, 4))
    return dense


def test_set_tracked_takes_a_variable_out_and_puts_it_back():
    dense = _built_dense("guard_tracked")
    kernel, bias = dense.kernel, dense.bias
    assert set_tracked(dense, kernel, None) == 0, (
        f"{KERAS}: the kernel is no longer first among a Dense's variables"
    )
    assert dense.weights == [bias], (
        f"{KERAS}: a variable taken out of the tracker still shows in `layer.weights`"
    )
    assert dense.count_params() == 3
    store = {}
    # A layer's own saving skips a variable taken out.
    keras.layers.Layer.save_own_variables(dense, store)
    assert list(store) == ["0"] and store["0"].shape == (3,)
    assert set_tracked(dense, kernel, 0) == 0
    assert dense.weights == [kernel, bias]
    assert dense.trainable_weights == [kernel, bias]
    # Taken out twice is refused; the tracker still tracks each variable once.
    set_tracked(dense, kernel, None)
    with pytest.raises(ValueError, match="not one of the own variables"):
        set_tracked(dense, kernel, None)
    set_tracked(dense, kernel, 0)


def test_set_tracked_handles_non_trainable_variables():
    norm = keras.layers.BatchNormalization(name="guard_tracked_bn")
    norm.build((None, 4))
    mean = norm.moving_mean
    index = set_tracked(norm, mean, None)
    assert all(w is not mean for w in norm.weights)
    assert set_tracked(norm, mean, index) == index
    assert [w.path for w in norm.non_trainable_weights] == [
        "guard_tracked_bn/moving_mean",
        "guard_tracked_bn/moving_variance",
    ]


def test_set_tracked_fails_loudly_on_an_unknown_tracker():
    dense = _built_dense("guard_tracked_changed")

    class OtherTracker:
        locked = True

    object.__setattr__(dense, "_tracker", OtherTracker())
    with pytest.raises(KerasInternalsError, match=r"Keras \S+: layer .* no variable"):
        set_tracked(dense, dense.kernel, None)


def test_weights_added_after_build_unlocks_then_locks_again():
    dense = _built_dense("guard_unlocked")
    # Without it, Keras refuses new variables on a built layer: the reason
    # the function exists. If this stops raising, the private use can go.
    with pytest.raises(ValueError):
        dense.add_weight(name="refused", shape=(2,))
    with weights_added_after_build(dense):
        extra = dense.add_weight(name="extra", shape=(2,), initializer="ones")
    assert dense.weights[-1] is extra
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(extra), np.ones(2))
    with pytest.raises(ValueError):
        dense.add_weight(name="refused_again", shape=(2,))


def test_weights_added_after_build_fails_loudly_without_a_tracker():
    dense = _built_dense("guard_unlocked_changed")
    object.__setattr__(dense, "_tracker", object())
    with (
        pytest.raises(KerasInternalsError, match="no lockable variable tracker"),
        weights_added_after_build(dense),
    ):
        pass


def test_set_parent_path_names_the_variables_under_it():
    dense = keras.layers.Dense(3, name="guard_path")
    outer = keras.layers.Layer(name="guard_outer")
    with keras.name_scope(outer.name):
        set_parent_path(dense, "chosen/parent")
        dense.build((None, 4))
    assert [w.path for w in dense.weights] == [
        "chosen/parent/guard_path/kernel",
        "chosen/parent/guard_path/bias",
    ], f"{KERAS}: a layer's parent path no longer names its variables"
    # A layer that already has a parent path keeps it.
    set_parent_path(dense, "elsewhere")
    assert dense.path == "chosen/parent/guard_path"


def test_set_parent_path_fails_loudly_without_one():
    class Bare:
        name = "bare"

    with pytest.raises(KerasInternalsError, match="no parent path"):
        set_parent_path(Bare(), "x")


# The inventory: every private Keras name used in `src/` is in the table of
# `docs/private-api.md`.

_PRIVATE_ACCESS = re.compile(r"\.(_[a-z][a-z0-9_]*)\b|[\"'](_[a-z][a-z0-9_]*)[\"']")


def _keras_private_names() -> set[str]:
    """Private attribute names of the Keras objects a library handles."""
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(inputs)
    model = keras.Model(inputs, outputs)
    objects = [
        keras.layers.Layer(),
        model,
        model.layers[1],
        model.layers[1].kernel,
        outputs,
        model.layers[1]._tracker,
        keras.optimizers.SGD(),
        keras.callbacks.Callback(),
    ]
    names = set()
    for obj in objects:
        for name in dir(obj) + list(vars(obj)):
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def _listed(name: str, table: str) -> bool:
    return re.search(rf"[`.]{re.escape(name)}\b", table) is not None


def test_every_private_keras_use_is_listed():
    keras_names = _keras_private_names()
    table = (ROOT / "docs" / "private-api.md").read_text()
    sources = sorted((ROOT / "src" / "keras_tether").rglob("*.py"))
    # Names keras-tether defines itself (`def _sparse`, `self._kernel = `)
    # are its own, whatever Keras names alike.
    own = set()
    for path in sources:
        own.update(re.findall(r"def (_[a-z][a-z0-9_]*)\(", path.read_text()))
        own.update(re.findall(r"self\.(_[a-z][a-z0-9_]*) =", path.read_text()))
    unlisted = []
    for path in sources:
        text = path.read_text()
        relative = path.relative_to(ROOT / "src").as_posix()
        if "keras.src" in text and relative not in table:
            unlisted.append(f"{relative}: keras.src")
        for match in _PRIVATE_ACCESS.finditer(text):
            name = match.group(1) or match.group(2)
            if name in keras_names - own and not _listed(name, table):
                unlisted.append(f"{relative}: {name}")
    assert not unlisted, (
        "Private Keras API used in src/ but not listed in docs/private-api.md "
        f"(add a row, with why and the guarding test): {sorted(set(unlisted))}"
    )


def test_the_internals_module_is_documented():
    table = (ROOT / "docs" / "private-api.md").read_text()
    for name in ("set_tracked", "weights_added_after_build", "set_parent_path"):
        assert hasattr(_keras_internals, name)
        assert _listed(name, table), name


def test_torch_counts_in_place_updates_of_a_variable():
    # `parametrize.cached()` reuses a value on PyTorch only while the count
    # of in-place updates of every variable it read is unchanged.
    from keras_tether.parametrize._cached import _token

    variable = keras.Variable(np.zeros(3, "float32"))
    before = _token([variable])
    variable.assign(np.ones(3, "float32"))
    after = _token([variable])
    if keras.backend.backend() == "tensorflow":
        assert before is None and after is None  # mutable variables: no reuse
        return
    assert before is not None, f"{KERAS}: a variable's read gives no token"
    if keras.backend.backend() == "torch":
        assert before[0][0] is after[0][0], "torch reads are the same tensor"
        assert before[0][1] != after[0][1], (
            "torch.Tensor._version no longer counts in-place updates"
        )
    else:
        assert before[0][0] is not after[0][0]  # JAX: a new array per update
