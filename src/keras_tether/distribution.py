"""Sharding the branch axis of keras-tether layers over devices.

Keras' own distribution engine does the work (`keras.distribution.ModelParallel`
with a `LayoutMap`); this module only writes the layout map that puts each
branch of a `ParallelDense` (its kernel, bias and LoRA weights) and each row
of a per-feature `WeightedAverage`'s logits on the devices of one mesh axis:
expert parallelism, with the branches of one layer spread over the devices.
"""

from __future__ import annotations

import keras

from keras_tether._validation import check_choice, check_instance
from keras_tether._walk import all_layers
from keras_tether.layers import Ensemble, ParallelDense, WeightedAverage

__all__ = ["branch_layout_map"]


def branch_layout_map(
    model: keras.layers.Layer,
    mesh: keras.distribution.DeviceMesh,
    branch_axis_name: str = "model",
    layout_map: keras.distribution.LayoutMap | None = None,
) -> keras.distribution.LayoutMap:
    """A `LayoutMap` that shards the branch axis of a model's branched layers.

    Every `ParallelDense` and `Ensemble` in `model`, nested layers and
    models included (a layer that holds `ParallelDense` sublayers, such as
    a mixture of experts, is covered as is), gets its variables split along
    their branch
    axis over the mesh axis `branch_axis_name`: with `B` branches on `D`
    devices, each device holds `B / D` branches. The logits of every
    per-feature `WeightedAverage` (`feature_axis` set, shape
    `(branches, features)`) are split the same way. Other variables are not
    listed, so Keras replicates them.

    The map is keyed by the variables' paths, so the model must be built.
    Build the model once, write the map, then rebuild it inside the
    distribution's scope under the same layer names, for instance with
    `keras.models.clone_model`, and copy the weights over:

    ```python
    layout_map = branch_layout_map(model, mesh)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch")
    with distribution.scope():
        sharded = keras.models.clone_model(model)
        sharded.set_weights(model.get_weights())
    ```

    Args:
        model: A built Keras model or layer.
        mesh: A `keras.distribution.DeviceMesh`, for instance of shape
            `(data, model)` with axis names `("batch", "model")`.
        branch_axis_name: String, the mesh axis the branches are split
            over. Defaults to `"model"`.
        layout_map: Optional `keras.distribution.LayoutMap` on the same mesh
            to add the entries to (for instance one that already shards
            other layers). Defaults to `None`: a new map.

    Returns:
        The `keras.distribution.LayoutMap`.

    Raises:
        TypeError: if `model` is not a Keras layer or `mesh` not a
            `keras.distribution.DeviceMesh`.
        ValueError: if the mesh has no axis `branch_axis_name`, if a layer's
            branch count is not a multiple of that axis' size, or if the
            model is not built.

    Example:

    >>> import keras
    >>> import keras_tether
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras_tether.layers.ParallelDense(3, branches=2, name="experts"),
    ... ], name="ensemble")
    >>> mesh = keras.distribution.DeviceMesh(
    ...     (1, 1), axis_names=("batch", "model"), devices=["cpu:0"])
    >>> layout_map = keras_tether.distribution.branch_layout_map(model, mesh)
    >>> sorted(layout_map)
    ['ensemble/experts/bias', 'ensemble/experts/kernel']
    >>> layout_map["ensemble/experts/kernel"].axes
    ('model', None, None)
    """
    check_instance(model, keras.layers.Layer, "model", "a Keras model or layer")
    check_instance(
        mesh, keras.distribution.DeviceMesh, "mesh", "a `keras.distribution.DeviceMesh`"
    )
    axis_names = list(mesh.axis_names)
    check_choice(branch_axis_name, axis_names, "branch_axis_name")
    devices = mesh.shape[axis_names.index(branch_axis_name)]
    if layout_map is None:
        layout_map = keras.distribution.LayoutMap(mesh)
    check_instance(
        layout_map,
        keras.distribution.LayoutMap,
        "layout_map",
        "a `keras.distribution.LayoutMap` or None",
    )
    other = layout_map.device_mesh
    if other is not mesh and (
        other is None
        or tuple(other.shape) != tuple(mesh.shape)
        or list(other.axis_names) != axis_names
    ):
        raise ValueError(
            "Received an invalid value for `layout_map`, expected a layout map "
            f"on the same `mesh`. Received: layout_map={layout_map!r} on mesh "
            f"{other!r}, mesh={mesh!r}"
        )
    if not model.built:
        raise ValueError(
            f"Cannot write a layout map for '{model.name}' before it is built: "
            "the map is keyed by the paths of its variables. Build the model "
            "first (call it, or give it an `Input`)."
        )
    for layer in all_layers(model, include_self=True):
        for variable, branches in _branch_variables(layer):
            if branches % devices:
                raise ValueError(
                    f"Cannot shard layer '{layer.name}' over mesh axis "
                    f"'{branch_axis_name}': its {branches} branches are not a "
                    f"multiple of the axis' {devices} devices. Use a branch "
                    "count that the axis size divides, or a smaller axis."
                )
            axes = (branch_axis_name,) + (None,) * (len(variable.shape) - 1)
            layout_map[variable.path] = axes
    return layout_map


def _branch_variables(layer: keras.layers.Layer) -> list:
    if isinstance(layer, Ensemble | ParallelDense) and layer.built:
        return [(variable, layer.branches) for variable in layer.weights]
    if (
        isinstance(layer, WeightedAverage)
        and layer.built
        and layer.feature_axis is not None
    ):
        return [(layer.logits, layer.logits.shape[0])]
    return []
