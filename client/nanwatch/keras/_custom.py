"""The same statistics for a hand-written ``tf.GradientTape`` loop: ``layer_table``,
``capture_activations`` and ``step_statistics``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from nanwatch.keras import _layers, _reductions


def layer_table(model: keras.Model) -> list[dict[str, Any]]:
    """The layer table for ``Monitor(layers=...)``: the model's watched layers, nested models flattened.

    Order: forward order for Sequential and Functional models, assignment order in ``__init__`` for
    subclassed ones. ``step_statistics`` columns follow this table.
    """
    return _layers.table(_layers.watched_layers(model), model.trainable_variables)


@contextlib.contextmanager
def capture_activations(model: keras.Model) -> Iterator[dict[str, tuple[Any, tuple[Any, ...]]]]:
    """Within the block, remember each watched layer's first ``(output, inputs)``, keyed by table name.

    Works eagerly and inside a ``tf.function`` (then the captured tensors belong to that trace, so call
    ``step_statistics`` in the same function). The layers' ``call`` is restored when the block ends.
    """
    layers = _layers.watched_layers(model)
    names = [row["name"] for row in _layers.table(layers, [])]
    captured: dict[str, tuple[Any, tuple[Any, ...]]] = {}
    previous = [layer.__dict__.get("call") for layer in layers]
    for layer, name in zip(layers, names, strict=True):
        layer.call = _capturing(layer.call, name, captured)
    try:
        yield captured
    finally:
        for layer, before in zip(layers, previous, strict=True):
            if before is None:
                layer.__dict__.pop("call", None)
            else:
                layer.call = before


def _capturing(original: Any, name: str, captured: dict[str, tuple[Any, tuple[Any, ...]]]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        outputs = original(*args, **kwargs)
        output = _layers.first_tensor(outputs)
        if output is not None and name not in captured:
            captured[name] = (output, tuple(t for t in tf.nest.flatten(args[:1]) if isinstance(t, tf.Tensor)))
        return outputs

    return call


def step_statistics(
    model: keras.Model,
    grads: Sequence[Any],
    *,
    variables: Sequence[Any] | None = None,
    loss: Any = None,
    lr: Any = None,
    loss_scale: Any = None,
    previous_weights: Sequence[Any] | None = None,
    activations: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``Monitor.log_step`` keyword arguments for one step of a custom loop, as tensors.

    ``grads`` pair with ``variables`` (default ``model.trainable_variables``); with ``loss_scale`` they
    are unscaled first. ``previous_weights`` (the variables' values read before the update) adds
    ``update_norm``; ``activations`` (from :func:`capture_activations`, or ``{layer name: output}``)
    adds the ``act_*`` fields. Columns follow :func:`layer_table`. Call it eagerly, or inside your
    ``tf.function`` and return the dict from it; the Monitor reads eager tensors itself.
    """
    layers = _layers.watched_layers(model)
    variables = list(model.trainable_variables if variables is None else variables)
    slots = _layers.owners(layers, variables)
    present = [(g, s) for g, s in zip(grads, slots, strict=True) if g is not None]
    inputs = _reductions.StepInputs(
        grads=_reductions.gradient_stats([g for g, _ in present]) if present else None,
        grad_slots=[s for _, s in present], new=[tf.convert_to_tensor(v) for v in variables],
        old=previous_weights, weight_slots=slots, activations=_measured(layers, activations or {}),
        scale=loss_scale,
    )  # fmt: skip
    plan = _reductions.Plan.of(inputs, len(layers))
    global_norm, fields = _reductions.finish(plan, _reductions.read(inputs))
    kwargs: dict[str, Any] = {"layers": fields}
    if global_norm is not None:
        kwargs["grad_norm"] = global_norm
    for key, value in (("loss", loss), ("lr", lr), ("loss_scale", loss_scale)):
        if value is not None:
            kwargs[key] = tf.cast(value, tf.float32)
    return kwargs


def _measured(layers: Sequence[keras.Layer], given: Mapping[str, Any]) -> _reductions.Activations | None:
    rows = _layers.table(layers, [])
    observed: list[_reductions.Observed] = []
    producers: dict[int, int] = {}
    for slot, (layer, row) in enumerate(zip(layers, rows, strict=True)):
        value = given.get(row["name"])
        if value is None:
            continue
        output, inputs = value if isinstance(value, tuple) else (value, ())
        own = [t for t in inputs if id(t) not in producers]
        sources = tuple(producers[id(t)] for t in inputs if id(t) in producers)
        observed.append(_reductions.Observed.of(slot, output, own, _layers.bounds(layer), sources))
        producers[id(output)] = slot
    return _reductions.measure(observed)
