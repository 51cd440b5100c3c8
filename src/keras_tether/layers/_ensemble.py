"""`Ensemble`: N independent copies of any Keras layer or model as one layer."""

from __future__ import annotations

import functools
import inspect
import random
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_tether._types import Shape, Tensor
from keras_tether._validation import check_bool, check_positive_int
from keras_tether._walk import all_layers

# Seeds handed to the copies' seed generators stay in int32's positive range,
# which every backend's seed handling accepts.
_MAX_SEED = 2**31 - 1

# Keys of a serialized config that differ between two copies of one
# architecture built separately (auto-generated names, the graph connections
# written with them, object ids), so comparisons of configs leave them out.
_IDENTITY_KEYS = frozenset(
    {"name", "inbound_nodes", "input_layers", "output_layers", "shared_object_id"}
)


def vectorized_map(function: Callable, elements: Any) -> Any:
    """Maps `function` over the leading axis of every tensor in `elements`.

    `keras.ops.vectorized_map`, except on torch: there it is `torch.vmap` in
    its default randomness mode, which raises on the first random draw
    (`Dropout`), and every branch of an ensemble must draw its own numbers,
    which `randomness="different"` gives.
    """
    if keras.backend.backend() == "torch":
        import torch

        elements = keras.tree.map_structure(ops.convert_to_tensor, elements)
        with _layout_queries_answered()():
            return torch.vmap(function, randomness="different")(elements)
    return ops.vectorized_map(function, elements)


@functools.cache
def _layout_queries_answered() -> Any:
    """A torch function mode class in which memory-layout queries answer yes.

    Keras' torch convolutions (from Keras 3.14) ask whether their operands
    are laid out channels-last, `tensor.is_contiguous(memory_format=...)`,
    to convert them if not; torch.vmap has no rule for that query and
    raises. The layout changes only the speed of the convolution, never
    its result, so under `Ensemble`'s map the answer is yes: the operands
    stay as they are, and every branch is batched.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    plain = torch.contiguous_format

    class LayoutQueriesAnswered(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.is_contiguous:
                layout = args[1] if len(args) > 1 else kwargs.get("memory_format")
                if layout not in (None, plain):
                    return True
            return func(*args, **kwargs)

    return LayoutQueriesAnswered


# On JAX without an accelerator, up to this many branches run unrolled by
# default (see `_unrolled_by_default`).
_JAX_CPU_UNROLL_MAX_BRANCHES = 8


def _unrolled_by_default(branches: int) -> bool:
    """Whether an `Ensemble` with `unroll=None` runs its branches unrolled.

    Only without an accelerator; there, vectorizing adds work that the
    branches alone do not do. On TensorFlow, Keras compiles models without
    XLA, and nothing fuses away what a vectorized map adds: transposes of
    the branch axis, and bias additions and activations that a single
    branch does inside its fused matrix product. Unrolled, each branch keeps
    its fused kernels and TensorFlow runs the branches side by side, at any
    number of branches. On JAX, XLA's CPU backend is slow at the reductions
    and windows (batch normalization, pooling) and the random draws of a
    vectorized map; with many branches, though, the unrolled program
    compiles and runs far slower than the vectorized one.
    """
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax") or _has_accelerator():
        return False
    return backend == "tensorflow" or branches <= _JAX_CPU_UNROLL_MAX_BRANCHES


@functools.cache
def _has_accelerator() -> bool:
    devices = keras.distribution.list_devices()
    return not all(device.lower().startswith("cpu") for device in devices)


def _loop_map(function: Callable, elements: Any) -> Any:
    """`function` on each branch's slice of `elements`, one call after another.

    Returns the results as `vectorized_map` does, with one exception: the
    first of the results (the layer's outputs) is stacked on axis 1, where
    the layer returns its branch axis, and needs no transpose.
    """
    leaves = keras.tree.flatten(elements)
    branches = leaves[0].shape[0]
    # One unstacking per tensor, not one slicing per tensor and branch.
    slices = [ops.unstack(leaf, num=branches, axis=0) for leaf in leaves]
    results = [
        function(
            keras.tree.pack_sequence_as(elements, [leaf[index] for leaf in slices])
        )
        for index in range(branches)
    ]
    outputs, *rest = zip(*results, strict=True)
    return (
        keras.tree.map_structure(lambda *xs: ops.stack(xs, axis=1), *outputs),
        *(keras.tree.map_structure(lambda *xs: ops.stack(xs), *part) for part in rest),
    )


class _Holder:
    # Keras tracks layers and variables set as attributes of a layer (in
    # lists and dicts too), and would then count the template's own (unused)
    # variables as the ensemble's. A plain object holding them is not tracked.
    def __init__(self, config: dict) -> None:
        # The serialized layer every copy is rebuilt from.
        self.config = config
        self.layer: keras.layers.Layer | None = None
        # The stack of each of the template's weights, by the weight's id.
        self.stacks: dict[int, keras.Variable] = {}
        # The template's seed generator states.
        self.seed_states: list[keras.Variable] = []
        # Set when torch.vmap cannot batch the template: the branches then
        # run one after another.
        self.loop = False


def _strip_names(config: Any) -> Any:
    if isinstance(config, dict):
        return {
            key: _strip_names(value)
            for key, value in config.items()
            if key not in _IDENTITY_KEYS
        }
    if isinstance(config, list | tuple):
        return [_strip_names(value) for value in config]
    return config


def _rebuild(config: dict, name: str | None = None) -> keras.layers.Layer:
    # Deserializing consumes parts of the config it is given.
    config = deepcopy(config)
    if name is not None:
        config["config"] = dict(config["config"], name=name)
    return keras.saving.deserialize_keras_object(config)


def _spec(shape: Shape, dtype: str) -> keras.KerasTensor:
    return keras.KerasTensor(tuple(shape), dtype=dtype)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        dim is None or isinstance(dim, int) for dim in value
    )


def _map_shapes(function: Callable, shapes: Any) -> Any:
    if _is_shape(shapes):
        return function(tuple(shapes))
    if isinstance(shapes, dict):
        return {key: _map_shapes(function, value) for key, value in shapes.items()}
    return type(shapes)(_map_shapes(function, value) for value in shapes)


@keras.saving.register_keras_serializable(package="keras_tether")
class Ensemble(keras.layers.Layer):
    """`branches` independent copies of a layer or model, computed as one layer.

    Branch `n` computes `layer_n(x)` for its own copy `layer_n` of `layer`
    (any Keras layer or model: `Sequential`, functional, subclassed, Keras'
    built-in layers, this library's layers), exactly what `branches`
    separately built copies compute. The copies' variables are held stacked,
    each with a leading axis of size `branches`, and all branches run in
    one call of this layer: one vectorized call of the copy
    (`keras.ops.vectorized_map`), or, unrolled, `branches` calls of the copy
    in one graph, each on its slice of the stacked variables (see
    `unroll`).

    With `per_branch_inputs=False` (the default) every branch reads the same
    input `x` of shape `(batch, ...)`; with `per_branch_inputs=True` the
    input carries a branch axis after the batch axis and branch `n` reads
    `x[:, n]`. The output has shape `(batch, branches, ...)`; a layer with
    nested outputs gives the same nesting, each tensor with its branch axis.
    Mix the branches with `WeightedAverage(branch_axis=1)` or `GatedAverage`.

    Each branch behaves as an independently built copy:

    - its variables are drawn from their own initializers on the shape of
      one copy (the fans of one copy, not of the stack), independently per
      branch, and reproducibly when `seed` is set;
    - its state is its own: each branch keeps its own `BatchNormalization`
      moving statistics, updated in training, and `Dropout` and the other
      random layers draw different numbers in each branch;
    - losses the layer adds (`add_loss`, activity regularizers) and weight
      regularizers are summed over the branches, weight constraints act on
      each branch, `training` and masks are passed through.

    The copies are rebuilt from `layer`'s config
    (`keras.saving.serialize_keras_object`), so `layer`'s own variables are
    neither used nor changed; a custom layer needs a complete `get_config`
    and `keras.saving.register_keras_serializable`. `from_models` stacks
    existing models of one architecture (their weights copied), and
    `to_models` gives the branches back as separate models.

    Args:
        layer: A `keras.layers.Layer` or `keras.Model`, the architecture of
            one branch.
        branches: Positive integer, the number of copies.
        per_branch_inputs: Boolean. If `True`, the input has shape
            `(batch, branches, ...)` and branch `n` reads `x[:, n]`.
            Defaults to `False`: every branch reads the whole input.
        seed: Optional integer, makes the initial weights and the random
            draws of the branches reproducible. Defaults to `None`.
        unroll: `None`, `True` or `False`. If `True`, the branches run
            unrolled, as `branches` calls of the copy in one graph (as an
            unrolled recurrent layer runs its steps); if `False`, as one
            vectorized call. Both compute the same numbers and keep the
            variables stacked; they differ in speed. Defaults to `None`:
            without a GPU or TPU, unrolled on TensorFlow (Keras then compiles
            without XLA, and nothing fuses away the transposes that
            vectorizing adds) and on JAX up to 8 branches; vectorized
            otherwise.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor, or a nested structure of tensors as `layer` takes.
        training: Python boolean, passed to every copy.
        mask: Optional mask, passed to copies whose `call` takes one.

    Input shape:
        What `layer` takes, `(batch, ...)`; with `per_branch_inputs=True`,
        `(batch, branches, ...)`.

    Output shape:
        What `layer` gives, with a branch axis after the batch axis:
        `(batch, branches, ...)`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> import keras_tether
    >>> mlp = keras.Sequential([
    ...     keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    >>> ensemble = keras_tether.layers.Ensemble(mlp, branches=4, seed=1)
    >>> tuple(ensemble(np.ones((3, 5))).shape)
    (3, 4, 2)
    >>> models = ensemble.to_models()
    >>> np.allclose(
    ...     keras.ops.convert_to_numpy(models[2](np.ones((3, 5)))),
    ...     keras.ops.convert_to_numpy(ensemble(np.ones((3, 5))))[:, 2],
    ...     atol=1e-6)
    True
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        branches: int,
        per_branch_inputs: bool = False,
        seed: int | None = None,
        unroll: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "Expected `layer` to be a `keras.layers.Layer` or `keras.Model`. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        branches = check_positive_int(branches, "branches")
        per_branch_inputs = check_bool(per_branch_inputs, "per_branch_inputs")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer)
        ):
            raise TypeError(
                "Expected `seed` to be an integer or `None`. "
                f"Received: seed={seed!r} of type {type(seed).__name__}"
            )
        if unroll is not None and not isinstance(unroll, bool):
            raise TypeError(
                "Expected `unroll` to be `True`, `False` or `None`. "
                f"Received: unroll={unroll!r} of type {type(unroll).__name__}"
            )
        super().__init__(**kwargs)
        self.branches = branches
        self.unroll = unroll
        self.per_branch_inputs = per_branch_inputs
        self.seed = None if seed is None else int(seed)
        self._template = _Holder(keras.saving.serialize_keras_object(layer))
        self._template.layer = self._copy(layer)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._initial_values: list[list[np.ndarray]] | None = None
        self._branch_input_shape = None
        self._call_takes_mask = "mask" in inspect.signature(layer.call).parameters

    def _copy(self, layer: keras.layers.Layer, name: str | None = None):
        # Every branch is rebuilt from the config; a config that rebuilds a
        # different layer would silently give branches unlike `layer`.
        try:
            copy = _rebuild(self._template.config, name)
        except Exception as error:
            raise ValueError(
                f"Ensemble builds each branch from the config of `layer`, and "
                f"rebuilding '{layer.name}' ({type(layer).__name__}) from its "
                f"config failed: {error}. Give the layer's class a "
                "`get_config` that returns every constructor argument and "
                "register it with "
                "`keras.saving.register_keras_serializable`."
            ) from error
        if name is None and _strip_names(copy.get_config()) != _strip_names(
            layer.get_config()
        ):
            raise ValueError(
                f"Ensemble builds each branch from the config of `layer`, but "
                f"'{layer.name}' ({type(layer).__name__}) rebuilt from its "
                "config has a different config: its `get_config` does not "
                "return every constructor argument. Received: "
                f"layer.get_config()={layer.get_config()}"
            )
        return copy

    @property
    def _layer(self) -> keras.layers.Layer:
        return self._template.layer

    def _drop_branch_axis(self, shape: Shape) -> Shape:
        if len(shape) < 2 or shape[1] not in (None, self.branches):
            raise ValueError(
                "With `per_branch_inputs=True` the input must have shape "
                f"(batch, branches={self.branches}, ...). "
                f"Received: input_shape={shape}"
            )
        return (shape[0],) + tuple(shape[2:])

    def _branch_shape(self, input_shape: Any) -> Any:
        if self.per_branch_inputs:
            return _map_shapes(self._drop_branch_axis, input_shape)
        return _map_shapes(tuple, input_shape)

    def _build_copy(self, copy: keras.layers.Layer) -> None:
        if copy.built:
            return
        dtype = self.compute_dtype
        copy(_map_shapes(lambda shape: _spec(shape, dtype), self._branch_input_shape))

    def build(self, input_shape: Any) -> None:
        self._branch_input_shape = self._branch_shape(input_shape)
        template = self._layer
        self._build_copy(template)
        weights = template.weights
        if not template.variables:
            raise ValueError(
                f"Cannot make an ensemble of '{template.name}' "
                f"({type(template).__name__}): it has no variables, so its "
                "copies would all be the same layer. Use the layer itself."
            )
        # TensorFlow's vectorized map turns the replicas' all-reduce of a
        # synchronized batch normalization into a loop it cannot
        # differentiate: the branches then run one after another.
        if keras.backend.backend() == "tensorflow" and any(
            isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
            for layer in all_layers(template, include_self=True)
        ):
            self._template.loop = True
        weight_ids = {id(variable) for variable in weights}
        # A seed generator's state is a variable of the layer but not one of
        # its weights; each call gives each branch fresh states instead.
        self._template.seed_states = [
            variable
            for variable in template.non_trainable_variables
            if id(variable) not in weight_ids
        ]
        values = self._initial_values
        if values is None:
            values = [self._draw_branch(index) for index in range(self.branches)]
        else:
            expected = [(tuple(v.shape), v.dtype) for v in weights]
            for index, branch in enumerate(values):
                received = [(tuple(np.shape(v)), str(v.dtype)) for v in branch]
                if [shape for shape, _ in received] != [s for s, _ in expected]:
                    raise ValueError(
                        f"Cannot stack model {index}: its weight shapes "
                        f"{[shape for shape, _ in received]} differ from the "
                        f"shapes {[s for s, _ in expected]} that the "
                        f"input shape {input_shape} gives."
                    )
        self._template.stacks = {}
        for position, variable in enumerate(weights):
            stack = self.add_weight(
                shape=(self.branches,) + tuple(variable.shape),
                dtype=variable.dtype,
                initializer="zeros",
                trainable=variable.trainable,
                regularizer=_per_branch(variable.regularizer),
                constraint=_per_branch(variable.constraint),
                # Named by position, not by the template's sublayer names,
                # which Keras numbers afresh each time a model is rebuilt:
                # a layout map written for one build fits the next.
                name=f"{variable.name}_{position}",
            )
            stack.assign(np.stack([branch[position] for branch in values]))
            self._template.stacks[id(variable)] = stack
        self._initial_values = None

    def _draw_branch(self, index: int) -> list[np.ndarray]:
        # A copy draws its initial weights from its own initializers, whose
        # unset seeds Keras takes from Python's `random`; seeding it per
        # branch (and restoring it after) makes `seed` reproduce the draws.
        state = random.getstate()
        if self.seed is not None:
            random.seed(f"keras_tether.Ensemble/{self.seed}/{index}")
        try:
            copy = _rebuild(self._template.config)
            self._build_copy(copy)
        finally:
            if self.seed is not None:
                random.setstate(state)
        return [ops.convert_to_numpy(variable) for variable in copy.weights]

    @property
    def trainable(self) -> bool:
        return super().trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # A frozen Keras model runs its BatchNormalization layers in inference
        # mode; freezing the ensemble freezes the template it calls likewise.
        keras.layers.Layer.trainable.fset(self, value)
        if hasattr(self, "_template"):
            self._layer.trainable = value

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        template = self._layer
        stacks = self._template.stacks
        trainable = [stacks[id(v)].value for v in template.trainable_variables]
        states = self._branch_seed_states()
        non_trainable = [
            stacks[id(v)].value if id(v) in stacks else states[id(v)]
            for v in template.non_trainable_variables
        ]
        kwargs = {}
        if training is not None:
            kwargs["training"] = training
        pass_mask = mask is not None and self._call_takes_mask
        if self.per_branch_inputs:
            mapped_inputs = keras.tree.map_structure(
                lambda x: ops.moveaxis(x, 1, 0), inputs
            )
            mapped_mask = (
                keras.tree.map_structure(lambda x: ops.moveaxis(x, 1, 0), mask)
                if pass_mask
                else None
            )

        def branch(elements):
            trainable_values, non_trainable_values = elements[:2]
            if self.per_branch_inputs:
                branch_inputs = elements[2]
                branch_mask = elements[3] if pass_mask else None
            else:
                branch_inputs, branch_mask = inputs, mask
            if pass_mask:
                kwargs["mask"] = branch_mask
            mapping = list(
                zip(template.trainable_variables, trainable_values, strict=True)
            ) + list(
                zip(template.non_trainable_variables, non_trainable_values, strict=True)
            )
            # The copy is called through `__call__` (not `stateless_call`,
            # which calls `call` directly), so its autocasting, masking and
            # `training` handling are Keras' own. Weight regularizers are not
            # among the collected losses: the stacks carry them per branch.
            with keras.StatelessScope(mapping, collect_losses=True) as scope:
                outputs = template(branch_inputs, **kwargs)
            new_weights = [
                scope.get_current_value(variable)
                for variable in template.non_trainable_variables
                if id(variable) in stacks
            ]
            return outputs, new_weights, list(scope.losses)

        elements = (trainable, non_trainable)
        if self.per_branch_inputs:
            elements += (mapped_inputs,) + ((mapped_mask,) if pass_mask else ())
        try:
            outputs, new_weights, losses = self._map_branches(branch, elements)
        except Exception as error:
            raise ValueError(
                f"Could not compute the branches of '{template.name}' "
                f"({type(template).__name__}) in one call on the "
                f"{keras.backend.backend()} backend: {type(error).__name__}: "
                f"{error}. Every layer inside must be computable by "
                "`keras.ops.vectorized_map` and in a compiled graph: no "
                "Python branching on tensor values, no conversion of tensors "
                "to NumPy or Python numbers."
            ) from error
        weights = [v for v in template.non_trainable_variables if id(v) in stacks]
        for variable, value in zip(weights, new_weights, strict=True):
            stacks[id(variable)].assign(value)
        if losses:
            self.add_loss(sum(ops.sum(loss) for loss in losses))
        return outputs

    def _map_branches(self, function: Callable, elements: Any) -> Any:
        """`function`'s results on every branch; outputs' branch axis is 1."""
        unroll = self.unroll
        if unroll is None:
            unroll = _unrolled_by_default(self.branches)
        if unroll or self._template.loop:
            return _loop_map(function, elements)
        try:
            outputs, *rest = vectorized_map(function, elements)
        except RuntimeError as error:
            # torch.vmap has no batching rule for some operations that Keras'
            # torch backend uses (`.item()` in seeded random draws);
            # TensorFlow's vectorized map likewise falls back to a loop for
            # operations it cannot batch.
            if keras.backend.backend() != "torch" or "vmap" not in str(error):
                raise
            reason = next(
                line.strip() for line in str(error).splitlines() if "vmap" in line
            )
            warnings.warn(
                f"Ensemble '{self.name}': torch.vmap cannot batch a layer of "
                f"'{self._layer.name}' ({reason}); its {self.branches} "
                "branches run one after another, each exactly as before.",
                stacklevel=2,
            )
            self._template.loop = True
            return _loop_map(function, elements)
        # The vectorized map stacks every result on axis 0; the layer's
        # outputs carry the branch axis second.
        outputs = keras.tree.map_structure(lambda x: ops.moveaxis(x, 0, 1), outputs)
        return (outputs, *rest)

    def _branch_seed_states(self) -> dict[int, Tensor]:
        states = {}
        for variable in self._template.seed_states:
            seeds = keras.random.randint(
                (self.branches,) + tuple(variable.shape),
                0,
                _MAX_SEED,
                dtype="int32",
                seed=self.seed_generator,
            )
            states[id(variable)] = ops.cast(seeds, variable.dtype)
        return states

    def compute_output_spec(
        self, inputs: Any, training: bool | None = None, mask: Any = None
    ) -> Any:
        def branch_spec(x):
            shape = tuple(x.shape)
            if self.per_branch_inputs:
                shape = self._drop_branch_axis(shape)
            return _spec(shape, x.dtype)

        branch_inputs = keras.tree.map_structure(branch_spec, inputs)
        outputs = self._layer.compute_output_spec(branch_inputs)
        return keras.tree.map_structure(
            lambda x: _spec((x.shape[0], self.branches) + tuple(x.shape[1:]), x.dtype),
            outputs,
        )

    def to_models(self) -> list[keras.layers.Layer]:
        """The branches as `branches` separate layers or models.

        Each is a new copy of the layer this ensemble was built from, holding
        one branch's current weights, so `to_models()[n](x)` equals
        `ensemble(x)[:, n]`. The copies are named after the layer with the
        branch index appended.

        Returns:
            A list of `branches` built layers or models.
        """
        if not self.built:
            raise ValueError(
                f"Cannot split ensemble '{self.name}' before it is built: call "
                "it on an input first."
            )
        template = self._layer
        models = []
        for index in range(self.branches):
            copy = _rebuild(self._template.config, name=f"{template.name}_{index}")
            self._build_copy(copy)
            for variable, source in zip(copy.weights, template.weights, strict=True):
                variable.assign(self._template.stacks[id(source)][index])
            models.append(copy)
        return models

    @classmethod
    def from_models(
        cls, models: Sequence[keras.layers.Layer], **kwargs: Any
    ) -> Ensemble:
        """An ensemble whose branches start as copies of `models`.

        The models must share one architecture (the same classes and configs,
        names aside) and be built; branch `n` gets a copy of `models[n]`'s
        weights. A model made on a `keras.Input` gives the ensemble its
        input shape, and the ensemble is built at once; otherwise it is built,
        and the weights copied, on its first call. The models themselves are
        not changed or used afterwards.

        Args:
            models: A list of built layers or models of one architecture.
            **kwargs: The other arguments of `Ensemble`, such as
                `per_branch_inputs` and `name`.

        Returns:
            An `Ensemble` with `branches=len(models)`.
        """
        if "branches" in kwargs or "layer" in kwargs:
            raise TypeError(
                "`from_models` takes the layer and the number of branches from "
                "`models`. Received: "
                f"{sorted(k for k in kwargs if k in ('branches', 'layer'))}"
            )
        if not isinstance(models, list | tuple) or not models:
            raise ValueError(
                "Expected `models` to be a non-empty list of layers or models. "
                f"Received: models={models!r}"
            )
        first = models[0]
        for index, model in enumerate(models):
            if not isinstance(model, keras.layers.Layer):
                raise TypeError(
                    "Expected `models` to hold `keras.layers.Layer` or "
                    f"`keras.Model` instances. Received: models[{index}]="
                    f"{model!r} of type {type(model).__name__}"
                )
            if not model.built:
                raise ValueError(
                    f"Cannot stack models[{index}] ('{model.name}'): it is not "
                    "built, so it has no weights to copy. Call it on an input "
                    "first."
                )
            if type(model) is not type(first) or _strip_names(
                model.get_config()
            ) != _strip_names(first.get_config()):
                raise ValueError(
                    f"Expected all `models` to share one architecture, but "
                    f"models[{index}] ('{model.name}') has a different config "
                    f"from models[0] ('{first.name}')."
                )
            shapes = [tuple(v.shape) for v in model.weights]
            if shapes != [tuple(v.shape) for v in first.weights]:
                raise ValueError(
                    f"Expected all `models` to share one architecture, but "
                    f"models[{index}] ('{model.name}') has weight shapes "
                    f"{shapes}, unlike models[0]: "
                    f"{[tuple(v.shape) for v in first.weights]}."
                )
        ensemble = cls(first, branches=len(models), **kwargs)
        ensemble._initial_values = [
            [ops.convert_to_numpy(v) for v in model.weights] for model in models
        ]
        # A model made on an `Input` (or a layer called on one) knows its
        # input shape: the ensemble is then built, and holds the weights, now.
        try:
            inputs = first.input
        except (AttributeError, ValueError):
            # A `Sequential` made on an `Input` lists it only in `inputs`.
            inputs = getattr(first, "inputs", None)
            if not (isinstance(inputs, list) and len(inputs) == 1):
                return ensemble
            inputs = inputs[0]
        shape = keras.tree.map_structure(lambda x: tuple(x.shape), inputs)
        if ensemble.per_branch_inputs:
            shape = _map_shapes(
                lambda s: (s[0], ensemble.branches) + tuple(s[1:]), shape
            )
        ensemble.build(shape)
        return ensemble

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "layer": deepcopy(self._template.config),
                "branches": self.branches,
                "per_branch_inputs": self.per_branch_inputs,
                "seed": self.seed,
                "unroll": self.unroll,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Ensemble:
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


class _PerBranch:
    # A weight regularizer or constraint written for one copy's variable,
    # applied to each branch of the stack.
    def __init__(self, function: Callable) -> None:
        self.function = function

    def __call__(self, stack: Tensor) -> Tensor:
        return vectorized_map(self.function, ops.convert_to_tensor(stack))


class _PerBranchRegularizer(_PerBranch, keras.regularizers.Regularizer):
    def __call__(self, stack: Tensor) -> Tensor:
        return ops.sum(super().__call__(stack))


def _per_branch(function: Callable | None) -> Callable | None:
    if function is None:
        return None
    if isinstance(function, keras.constraints.Constraint):
        return _PerBranchConstraint(function)
    return _PerBranchRegularizer(function)


class _PerBranchConstraint(_PerBranch, keras.constraints.Constraint):
    pass
