"""The layer table: which layers of a Keras model are watched, what they are called, who owns which weight."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import keras
import tensorflow as tf

from nanwatch import protocol

# Output ranges of the bounded activations whose saturation is measured (act_frac_saturated).
BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
}
_ACTIVATION_LAYERS: Final = {"Softmax": "softmax"}  # layers that are an activation without `.activation`
_SELECTING: Final = frozenset(
    getattr(keras.layers, name)
    for name in """Flatten Reshape Permute RepeatVector Identity MaxPooling1D MaxPooling2D MaxPooling3D
    GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D Cropping1D Cropping2D Cropping3D ZeroPadding1D
    ZeroPadding2D ZeroPadding3D UpSampling1D UpSampling2D UpSampling3D""".split()  # noqa: SIM905
)
"""Keras layer classes (exactly these, not subclasses) whose output holds only values of their input, and
zeros for padding: they compute nothing that could overflow, saturate or turn non-finite."""


def watched_layers(model: keras.Model) -> list[keras.Layer]:
    """Every layer of ``model`` whose output is measured, depth first in definition order.

    Models nested in the model are flattened into their layers (a nested model is a container, not a
    computation); input layers are left out, and so are the layers that only select, move or repeat
    values (:func:`selects_only`: max pooling, Flatten, Reshape, cropping, padding, nearest upsampling):
    every value they output was output, and measured, by the layer before them, so a NaN or Inf is named
    where it appeared, and reading their outputs again costs a step as much as reading a convolution's.
    For Sequential and Functional models this is forward order; for subclassed models it is the order the
    layers were assigned in ``__init__``.
    """
    return [layer for layer in all_layers(model) if not selects_only(layer)]


def all_layers(model: keras.Model) -> list[keras.Layer]:
    """Every layer of ``model``, nested models flattened (see :func:`watched_layers`)."""
    found: list[keras.Layer] = []
    seen: set[int] = set()
    _collect(model, found, seen)
    return found


def selects_only(layer: keras.Layer) -> bool:
    """Whether each value ``layer`` outputs is one of its input's values (or a zero it pads with).

    Only Keras' own classes count (a subclass may compute in ``call``); UpSampling2D only with
    ``interpolation="nearest"`` (bilinear and the others compute new values).
    """
    kind = type(layer)
    if kind is keras.layers.UpSampling2D:
        return getattr(layer, "interpolation", "nearest") == "nearest"
    return kind in _SELECTING


def first_tensor(structure: Any) -> tf.Tensor | None:
    """The first tensor of a layer call's (nested) inputs or outputs: the one that is measured."""
    return next((t for t in tf.nest.flatten(structure) if isinstance(t, tf.Tensor)), None)


def _collect(layer: keras.Layer, found: list[keras.Layer], seen: set[int]) -> None:
    children = layer.layers if isinstance(layer, keras.Model) else getattr(layer, "_layers", [])
    for child in children:
        if id(child) in seen or isinstance(child, keras.layers.InputLayer):
            continue
        seen.add(id(child))
        if not isinstance(child, keras.Model):
            found.append(child)
        _collect(child, found, seen)


def owners(layers: Sequence[keras.Layer], variables: Iterable[Any]) -> list[int]:
    """For each variable, the index in ``layers`` of the innermost layer holding it (-1 when none does).

    A weight counts once, for the innermost watched layer (the LSTM cell's kernel belongs to the cell if
    the cell is watched, else to the LSTM layer).
    """
    owner: dict[int, int] = {}
    by_size = sorted(range(len(layers)), key=lambda i: -len(layers[i].trainable_variables))
    for index in by_size:  # inner layers hold subsets of their parents' weights, so they come later
        for variable in layers[index].trainable_variables:
            owner[id(variable)] = index
    return [owner.get(id(v), -1) for v in variables]


def activation_name(layer: keras.Layer) -> str | None:
    """The name of the layer's activation (``"relu"``), or None for a layer without one."""
    if type(layer).__name__ in _ACTIVATION_LAYERS:
        return _ACTIVATION_LAYERS[type(layer).__name__]
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    name = getattr(activation, "__name__", None) or type(activation).__name__
    return str(name)


def table(layers: Sequence[keras.Layer], variables: Sequence[Any]) -> list[dict[str, Any]]:
    """The protocol's layer table for ``layers`` (in that order): name, kind, activation, params and the
    compute dtype (``float16`` for most layers under ``mixed_float16``, ``float32`` where a layer sets it).

    ``params`` counts the trainable parameters each layer owns (see :func:`owners`); names that repeat
    (two nested models both holding a ``dense``) get a ``#2`` suffix so every row is distinct.
    """
    params = [0] * len(layers)
    for variable, index in zip(variables, owners(layers, variables), strict=True):
        if index >= 0:
            params[index] += int(_size(variable))
    rows, names = [], set()
    for layer, count in zip(layers, params, strict=True):
        name, k = layer.name, 2
        while name in names:
            name, k = f"{layer.name}#{k}", k + 1
        names.add(name)
        row = {"name": name, "kind": type(layer).__name__, "activation": activation_name(layer), "params": count}
        dtype = str(getattr(layer, "compute_dtype", "") or "")
        if dtype in protocol.LAYER_DTYPES:
            row["dtype"] = dtype
        rows.append(row)
    return rows


def bounds(layer: keras.Layer) -> tuple[float, float] | None:
    """The output range of a bounded activation layer, None for unbounded ones."""
    name = activation_name(layer)
    return None if name is None else BOUNDS.get(name)


def _size(variable: Any) -> int:
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size
