"""One step's per-layer statistics, in two stages.

``read`` reduces every gradient, weight and update to a few numbers (one ``l2_loss`` per parameter
tensor, and on detail steps ``sum |g|`` and ``||Δw||``) and takes the columns of what ``measure`` made
of the layer outputs. ``finish`` turns those small vectors into ``[n_layers]`` fields with a handful of
vectorised ops (segment sums by layer column): on CPU each TensorFlow op costs microseconds however
small its input, so nothing is done per tensor that can be done once for all.

Tiers: every step carries the global gradient norm, per-layer ``grad_norm`` and the every-step
activation fields (everything a non-finite value shows in); detail steps add ``weight_norm``,
``grad_mean_abs``, ``update_norm`` and the detail activation fields. Where asked to be safe (the
custom-loop helpers; not the training callback, to which a ``tf.cond`` costs ~1-2 % of a CPU step), weight
and gradient norms switch to the scale-safe parts (``_norms``, one ``tf.cond`` each) on a step where a
quick one is not finite.
The detail sums are plain float32: ``sum |g|`` overflows only past 3.4e38 and ``||Δw||`` past 1.8e19,
far beyond where the every-step norms have raised the alarm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import tensorflow as tf

from nanwatch.keras import _activations, _norms

__all__ = [
    "Activations", "GradStats", "Observed", "Plan", "StepInputs", "finish", "gradient_stats", "measure", "read",
]  # fmt: skip

_T = TypeVar("_T")


@dataclass(frozen=True)
class Observed:
    """One watched layer's output as its ``call`` made it, with its quick reductions (``_activations.quick``).

    ``inputs``: the layer's inputs that no watched layer produced; ``sources``: the columns of the watched
    layers whose outputs it read.
    """

    slot: int
    output: Any
    inputs: tuple[Any, ...]
    bounds: _activations.Bounds
    quick: tf.Tensor
    sources: tuple[int, ...] = ()

    @classmethod
    def of(cls, slot: int, output: Any, inputs: Sequence[Any], bounds: _activations.Bounds,
           sources: Sequence[int] = (), tops: bool = True, rows: bool = True) -> Observed:  # fmt: skip
        """``tops``, ``rows``: see ``_activations.quick`` (``rows`` only where the details are measured)."""
        quick = _activations.quick(output, inputs, tops, rows)
        return cls(slot, output, tuple(inputs), bounds, quick, tuple(sources))


@dataclass(frozen=True)
class Activations:
    """Several layers' outputs reduced to ``_activations.parts``: row i is layer column ``slots[i]``."""

    slots: tuple[int, ...]
    sources: tuple[tuple[int, ...], ...]  # per row: the columns of the watched layers it read
    parts: tf.Tensor
    fields: tuple[str, ...] = _activations.FIELDS  # the act_* fields ``parts`` carries

    def __add__(self, other: Activations) -> Activations:
        parts = tf.concat([self.parts, other.parts], 0)
        fields = tuple(f for f in _activations.FIELDS if f in self.fields or f in other.fields)
        return Activations(self.slots + other.slots, self.sources + other.sources, parts, fields)


def measure(observed: Sequence[Observed], detail: Any = True) -> Activations | None:
    """The activation parts of ``observed`` layers, all at once (one ``tf.cond``; see ``_activations``)."""
    if not observed:
        return None
    parts = _activations.parts(
        [o.output for o in observed], [o.inputs for o in observed], [o.bounds for o in observed],
        [o.quick for o in observed], detail,
    )  # fmt: skip
    tops = all(o.quick.shape[-1] >= len(_activations.QUICK) for o in observed)
    fields = _activations.measured_fields(detail, tops)
    return Activations(tuple(o.slot for o in observed), tuple(o.sources for o in observed), parts, fields)


@dataclass(frozen=True)
class GradStats:
    """Per-gradient reductions, taken where the gradients are made (before the optimizer uses them).

    ``squares``: each gradient's own ``l2_loss``, before they are stacked into ``parts``.
    """

    parts: _norms.Parts
    abs_sums: tf.Tensor | None  # sum |g| per gradient; None without details, zeros on a strided-out step
    sizes: tf.Tensor
    squares: tuple[tf.Tensor, ...] = ()


def gradient_stats(grads: Sequence[Any], detail: Any = True, *, safe: bool = True) -> GradStats:
    """Norm parts of ``grads`` and, on detail steps, their sums of ``|g|``.

    ``detail`` is True, False, or a boolean tensor (then ``abs_sums`` is zeros on the other steps).
    ``safe``: scale-safe parts (see ``_norms``): a ``tf.cond`` that reads every gradient again when a
    square overflowed. Without it a norm above ~2.6e19, whose square overflows float32, reads as +Inf;
    in exchange no reference of ours outlives each gradient's own reduction, so the optimizer can update
    in place (the training callback's choice: see ``_instrument``).
    """
    grads = [_norms.f32(g) for g in grads]
    squares = tuple(tf.nn.l2_loss(g) for g in grads)
    quick = tf.ones([len(grads)]), tf.stack(squares)
    parts = quick
    if safe:
        parts = tf.cond(_norms.all_finite(quick[1]), lambda: quick, lambda: _norms.safe_parts(grads))
    if isinstance(detail, bool):
        abs_sums = _norms.sums_abs(grads) if detail else None
    else:
        abs_sums = tf.cond(detail, lambda: _norms.sums_abs(grads), lambda: tf.zeros([len(grads)]))
    sizes = tf.stack([tf.cast(tf.size(g), tf.float32) for g in grads])
    return GradStats(parts, abs_sums, sizes, squares)


@dataclass(frozen=True)
class StepInputs:
    """What one step hands over; ``*_slots`` give each tensor's layer column (-1: no watched layer).

    ``old`` (the weights read before the update) enables ``update_norm``; ``scale`` (a loss scale) is
    divided out of the gradients' statistics.
    """

    grads: GradStats | None = None
    grad_slots: Sequence[int] = ()
    new: Sequence[Any] = ()
    old: Sequence[Any] | None = None
    weight_slots: Sequence[int] = ()
    activations: Activations | None = None
    scale: Any = None


@dataclass(frozen=True)
class Plan:
    """The static shape of one step's statistics: which tensors exist and which column each feeds."""

    n_layers: int
    grad_slots: tuple[int, ...] = ()
    weight_slots: tuple[int, ...] = ()
    act_slots: tuple[int, ...] = ()
    act_fields: tuple[str, ...] = ()
    act_sources: tuple[tuple[int, ...], ...] = ()
    grads: bool = False
    grad_details: bool = False
    weights: bool = False
    updates: bool = False
    scaled: bool = False

    @classmethod
    def of(cls, inputs: StepInputs, n_layers: int) -> Plan:
        acts = inputs.activations or Activations((), (), tf.zeros([0, len(_activations.PARTS)]))
        index = {slot: i for i, slot in enumerate(acts.slots)}
        return cls(
            n_layers=n_layers,
            grad_slots=tuple(inputs.grad_slots),
            weight_slots=tuple(inputs.weight_slots),
            act_slots=acts.slots,
            act_fields=acts.fields,
            act_sources=tuple(tuple(index[s] for s in sources if s in index) for sources in acts.sources),
            grads=inputs.grads is not None,
            grad_details=inputs.grads is not None and inputs.grads.abs_sums is not None,
            weights=bool(inputs.new),
            updates=bool(inputs.new) and inputs.old is not None,
            scaled=inputs.scale is not None,
        )


# ---------------------------------------------------------------------- stage 1: read the big tensors


def read(inputs: StepInputs, detail: Any = True, *, safe: bool = True) -> dict[str, Any]:
    """The small raw vectors of one step; ``detail``: True, or a boolean tensor (a stride's step test).

    Weights and updates are detail statistics: a step that measures no details passes neither ``new`` nor
    ``old``. ``safe``: scale-safe weight norms (a ``tf.cond``, ~2 % of the benchmark MLP's step); without
    it a weight norm above ~1.8e19, whose square overflows float32, reads as +Inf, as the training
    callback's gradient and update norms do.
    """
    new = [_norms.f32(w) for w in inputs.new]
    raw: dict[str, Any] = {}
    if inputs.grads is not None:
        raw["grad_m"], raw["grad_s"] = inputs.grads.parts
        raw["grad_sizes"] = inputs.grads.sizes
        if inputs.grads.abs_sums is not None:
            raw["grad_abs"] = inputs.grads.abs_sums
    if inputs.scale is not None:
        raw["scale"] = tf.cast(inputs.scale, tf.float32)
    if new:
        # zeros on the other steps of an in-graph counter: a non-finite weight shows in the next forward
        # pass's activations and gradients, which every step measures
        zeros = tf.zeros([len(new)])
        weight_parts = _weight_parts if safe else _norms.quick_parts
        raw["weights"] = _when(detail, lambda: weight_parts(new), lambda: (zeros, zeros))
        if inputs.old is not None:
            raw["delta_s"] = _when(detail, lambda: _update_squares(new, inputs.old or ()), lambda: zeros)
    if inputs.activations is not None:
        raw["acts"] = _activations.columns(inputs.activations.parts)
    return raw


def _weight_parts(new: Sequence[tf.Tensor]) -> _norms.Parts:
    quick = _norms.quick_parts(new)
    return tf.cond(_norms.all_finite(quick[1]), lambda: quick, lambda: _norms.safe_parts(new))  # type: ignore[no-any-return]


def _update_squares(new: Sequence[tf.Tensor], old: Sequence[Any]) -> tf.Tensor:
    """``||new - old||^2 / 2`` per weight."""
    return _norms.quick_parts([n - _norms.f32(o) for n, o in zip(new, old, strict=True)])[1]


def _when(detail: Any, compute: Callable[[], _T], otherwise: Callable[[], _T]) -> _T:
    """``compute()`` on detail steps, ``otherwise()`` on the others (``detail``: True or a boolean tensor)."""
    if detail is True:
        return compute()
    return tf.cond(detail, compute, otherwise)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- stage 2: finish (small vectors)


def finish(plan: Plan, raw: dict[str, Any]) -> tuple[tf.Tensor | None, dict[str, tf.Tensor]]:
    """The global gradient norm (None without gradients) and the ``[n_layers]`` fields of the step.

    Layers without weights get 0.0 in the weight and gradient fields, layers not measured 0.0 in the
    activation fields; fields with nothing behind them are left out.
    """
    fields: dict[str, tf.Tensor] = {}
    global_norm = _param_norms(plan, raw, fields)
    inverse = 1.0 / raw["scale"] if plan.scaled else 1.0
    if plan.grad_details:
        ids, n = _norms.columns(plan.grad_slots, plan.n_layers), plan.n_layers + 1
        total = _norms.segment_sums(raw["grad_abs"], ids, n)
        count = tf.maximum(_norms.segment_sums(raw["grad_sizes"], ids, n), 1.0)
        fields["grad_mean_abs"] = (total / count)[: plan.n_layers]
        if plan.scaled:
            fields["grad_mean_abs"] = fields["grad_mean_abs"] * inverse
    if plan.updates:
        ids = _norms.columns(plan.weight_slots, plan.n_layers)
        parts = (tf.ones(raw["delta_s"].shape), raw["delta_s"])  # unit scale, static: the short norm path
        fields["update_norm"] = _norms.segment_norms(parts, ids, plan.n_layers + 1)[: plan.n_layers]
    if plan.act_slots:
        fields.update(
            _scatter(_activations.fields(plan.act_sources, raw["acts"], plan.act_fields), plan.act_slots, plan.n_layers)
        )
    if global_norm is not None and plan.scaled:
        fields["grad_norm"] = fields["grad_norm"] * inverse
        global_norm = global_norm * inverse
    return global_norm, fields


def _param_norms(plan: Plan, raw: dict[str, Any], fields: dict[str, tf.Tensor]) -> tf.Tensor | None:
    """Per-layer gradient and weight norms and the global gradient norm, in one segment reduction."""
    n = plan.n_layers + 1
    ms, ss, ids = [], [], []
    if plan.grads:
        ms += [raw["grad_m"], raw["grad_m"]]
        ss += [raw["grad_s"], raw["grad_s"]]
        ids += _norms.columns(plan.grad_slots, plan.n_layers) + [2 * n] * len(plan.grad_slots)
    if plan.weights:
        ms.append(raw["weights"][0])
        ss.append(raw["weights"][1])
        ids += _norms.columns(plan.weight_slots, plan.n_layers, n)
    if not ids:
        return None
    norms = _norms.segment_norms((tf.concat(ms, 0), tf.concat(ss, 0)), ids, 2 * n + 1)
    if plan.weights:
        fields["weight_norm"] = norms[n : n + plan.n_layers]
    if not plan.grads:
        return None
    fields["grad_norm"] = norms[: plan.n_layers]
    return norms[2 * n]


def _scatter(values: dict[str, tf.Tensor], slots: Sequence[int], n_layers: int) -> dict[str, tf.Tensor]:
    """Per-activation vectors placed into ``[n_layers]`` columns (0.0 for layers not measured)."""
    if list(slots) == list(range(n_layers)):
        return values
    index = tf.constant([[s] for s in slots], tf.int32)
    return {k: tf.scatter_nd(index, v, [n_layers]) for k, v in values.items()}
