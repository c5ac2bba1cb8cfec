"""What one traced training step remembers, and the step vector made from it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from nanwatch.keras import _reductions, _vector


class Details(enum.Enum):
    """Which steps of a traced train function take the detail statistics (see ``_instrument``)."""

    EVERY = "every"  # all: the detail train function, or the only one at ``activation_stride=1``
    NONE = "none"  # none: the light train function (the host calls the detail one on detail steps)
    COUNTED = "counted"  # those an in-graph step counter picks (``steps_per_execution > 1``)

    def in_step(self, counter: tf.Variable, stride: int) -> Any:
        """What the reductions take as ``detail``: True, False, or a boolean tensor (``COUNTED``)."""
        if self is Details.COUNTED:
            return tf.equal(counter.read_value() % stride, 0)
        return self is Details.EVERY


@dataclass
class StepTrace:
    """What one trace (or, under ``run_eagerly``, one run) of the training step has seen so far."""

    graph: Any
    eager: bool
    pending: list[_reductions.Observed] = field(default_factory=list)  # observed, not yet measured
    observed: list[_reductions.Observed] = field(default_factory=list)  # everything observed, in order
    seen: set[int] = field(default_factory=set)  # the layer columns observed in this step
    activations: _reductions.Activations | None = None
    producers: dict[int, int] = field(default_factory=dict)  # id(output tensor) -> its layer's column
    passed: list[Any] = field(default_factory=list)  # outputs of layers that only select (keys of producers)
    loss: Any = None
    detail: Any = True  # whether this step measures details: a bool, or a boolean tensor (in-graph counter)
    applied: bool = False  # whether the step called optimizer.apply
    updated: Any = None  # whether the guard let the update through (a boolean tensor; None: no guard)
    grads: _reductions.GradStats | None = None
    old: list[Any] | None = None  # the weights before the update (detail steps)
    new: list[Any] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    weight_slots: list[int] | None = None
    lr: Any = None
    scale: Any = None

    def settle(self) -> None:
        """Measure the outputs observed so far, all at once (at the end of the forward pass)."""
        measured = _reductions.measure(self.pending, self.detail)
        self.observed += self.pending
        self.pending = []
        if measured is not None:
            self.activations = measured if self.activations is None else self.activations + measured

    def owns(self, tensor: Any) -> bool:
        return self.eager or getattr(tensor, "graph", None) is self.graph

    def current(self) -> bool:
        """Whether code running now builds ops into this step's own graph (not a cond or loop body)."""
        return self.eager or tf.compat.v1.get_default_graph() is self.graph


def step_vector(
    trace: StepTrace,
    plan: _reductions.Plan,
    raw: dict[str, Any],
    values: dict[str, Any],
    layout: _vector.Layout,
    *,
    lso: bool,
    fold: bool,
) -> tf.Tensor:
    """The step vector of one step (folded into ``values["previous"]`` when ``fold``)."""
    global_norm, fields = _reductions.finish(plan, raw)
    # Under a LossScaleOptimizer a non-finite gradient means the scaler skips the step: that is the
    # scaler's overflow, not the model's gradient, so the record says "skipped" instead. A step the guard
    # skips (``_guard``) keeps its gradient norms: they are the model's, and name the layer.
    kept = tf.math.is_finite(global_norm) if lso and global_norm is not None else tf.constant(True)
    for name in _vector.GRAD_FIELDS if lso else ():
        if name in fields:
            fields[name] = tf.where(kept, fields[name], 0.0)
    updated = kept if lso or trace.updated is None else trace.updated
    flags = (trace.loss is not None, trace.applied, bool(plan.act_slots))
    step = layout.pack(_scalars(values, global_norm, kept, updated, raw.get("scale"), *flags), fields)
    return layout.fold_into(values["previous"], step) if fold else step


def _scalars(
    values: dict[str, Any],
    global_norm: Any,
    kept: Any,
    updated: Any,
    scale: Any,
    has_loss: bool,
    applied: bool,
    has_acts: bool,
) -> dict[int, Any]:
    """The step vector's scalar positions (see ``_vector``) for one step."""
    scalars: dict[int, Any] = {_vector.STEPS: 1.0}
    on, kept = values["detail"], tf.cast(kept, tf.float32)
    if has_loss:
        scalars[_vector.LOSS], scalars[_vector.LOSS_N] = values["loss"], 1.0
    if applied:
        scalars[_vector.APPLY_N], scalars[_vector.LR], scalars[_vector.UPDATE_N] = 1.0, values["lr"], on
        scalars[_vector.SKIPPED] = 1.0 - tf.cast(updated, tf.float32)
    if global_norm is not None:
        scalars[_vector.GRAD_NORM] = tf.where(kept > 0.0, global_norm, 0.0)
        scalars[_vector.GRAD_N], scalars[_vector.GRAD_DETAIL_N] = kept, kept * on
    if scale is not None:
        scalars[_vector.LOSS_SCALE] = scale
    if has_acts:
        scalars[_vector.ACT_N], scalars[_vector.ACT_DETAIL_N] = 1.0, on
        scalars[_vector.ACT_TOPS_N] = values["act_tops"]
    return scalars
