"""Activation statistics of the watched layers, from the outputs the training step's forward pass made.

Two stages, so that the per-layer work is the bare reductions and everything else runs once for all
layers (on CPU each TensorFlow op and each ``tf.cond`` costs microseconds however small its input):

- :func:`quick`, where a layer's output is made (inside its wrapped ``call``): the ``sum`` of the output
  (NaN or Inf anywhere in it shows there) and, where max and min are wanted on every step (float16 and
  bfloat16 runs, whose headroom is small, or no stride), ``max``, ``min`` and the max |x| of the inputs
  no watched layer produced. Elsewhere those three come with the detail statistics and on every step
  that holds a non-finite value. On a detail step max and min come from each row's max and min, which
  also count the zero-variance rows.
- :func:`parts`, once for all layers at the end of the forward pass. On a detail step it derives
  ``act_max_abs``, ``act_mean`` and ``act_frac_nonfinite`` (0) from the quick values and adds ``act_std``,
  ``act_frac_zero``, ``act_frac_saturated`` and ``act_frac_zero_var`` from the detail reductions of each
  output, then one ``tf.cond`` on whether all of these are finite (under an in-graph step counter a first
  cond on the quick values decides whether to go on). On a step where some value is not finite (a NaN or Inf
  entry, or a sum that overflowed) the masked formulas run for the layers concerned: mean and std over
  the finite entries, max |x| +Inf when any entry is ±Inf, a row holding NaN never counted as
  zero-variance. A light step (``detail=False``: the host runs the details in another function) has no
  ``tf.cond``: the quick values are all it reports, so a non-finite output shows as its NaN or ±Inf
  ``act_mean`` (and max |x| where max and min are taken every step) with ``act_frac_nonfinite`` NaN,
  which says "non-finite entries, their share not measured".

``parts`` keeps the outputs referenced until it runs, i.e. until the forward pass ends; the backward pass
needs nearly all of them until later anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import tensorflow as tf

from nanwatch.keras._norms import INF, f32, safe_scale

EVERY_STEP: Final = ("act_mean", "act_frac_nonfinite")
TOPS: Final = ("act_max_abs", "in_max_abs")
"""Every step when the quick vectors hold max and min; else on detail steps and non-finite steps."""
DETAIL: Final = ("act_std", "act_frac_zero", "act_frac_saturated", "act_frac_zero_var")
FIELDS: Final = (*EVERY_STEP, *TOPS, *DETAIL)
QUICK: Final = ("max", "min", "sum", "in_top")
"""The order of the values in the vector :func:`quick` returns."""
_DETAIL_PARTS: Final = ("s2", "zero_var", "nonzero", "saturated")
_MEASURED: Final = ("top", "s1", "finite", "scale", "constant", "in_top", *_DETAIL_PARTS)
PARTS: Final = (*_MEASURED, "tops", "n", "rows")
"""The order of the columns of the matrix :func:`parts` returns."""
_SATURATION_EPS: Final = 1e-7
Parts = dict[str, tf.Tensor]
Bounds = tuple[float, float] | None


def quick(output: Any, inputs: Sequence[Any], tops: bool = True, rows: bool = False) -> tf.Tensor:
    """``max``, ``min``, ``sum`` of ``output`` and max |x| of ``inputs`` (the layer inputs that no watched
    layer produced), as one vector in ``QUICK`` order; without ``tops`` only the ``sum``. ``rows`` (with
    ``tops``): max and min are taken per row first and one more value follows, the number of rows whose
    values are all equal (``act_frac_zero_var``'s count, which needs the row extremes anyway): two
    passes over the output instead of four on a detail step.
    """
    x = f32(output)
    if not tops:
        return tf.reshape(tf.reduce_sum(x), [1])
    maxima = [tf.maximum(tf.abs(tf.reduce_max(t)), tf.abs(tf.reduce_min(t))) for t in (f32(t) for t in inputs)]
    table = _rows(x) if rows else None
    if table is None:
        top, bottom = tf.reduce_max(x), tf.reduce_min(x)
        extra = [tf.constant(0.0)] if rows else []
    else:
        row_top, row_bottom = tf.reduce_max(table, 1), tf.reduce_min(table, 1)
        top, bottom = tf.reduce_max(row_top), tf.reduce_min(row_bottom)
        extra = [tf.reduce_sum(tf.cast(tf.equal(row_top, row_bottom), tf.float32))]
    return tf.stack([top, bottom, tf.reduce_sum(x), _top_of(maxima), *extra])


def parts(
    outputs: Sequence[Any],
    inputs: Sequence[Sequence[Any]],
    bounds: Sequence[Bounds],
    quicks: Sequence[tf.Tensor],
    detail: Any = True,
) -> tf.Tensor:
    """The ``[layers, len(PARTS)]`` matrix of the outputs' parts, from their :func:`quick` vectors.

    ``detail``: a bool, or a boolean tensor (a stride's in-graph step test); the detail columns are 0
    when it is false.
    Quick vectors of the sum alone (``quick(..., tops=False)``) leave max, min and ``in_top`` to detail
    steps and steps with a non-finite value; the ``tops`` column says when they were taken.
    """
    xs, owns = [f32(x) for x in outputs], [[f32(t) for t in ts] for ts in inputs]
    q = tf.stack(quicks)
    tops = q.shape[-1] >= len(QUICK)
    counted = q.shape[-1] > len(QUICK)  # the quick vectors carry the zero-variance row counts
    n = len(xs)
    sizes = tf.stack([tf.cast(tf.size(x), tf.float32) for x in xs])
    rows = tf.stack([tf.cast(tf.shape(x)[0], tf.float32) if x.shape.rank else tf.constant(1.0) for x in xs])
    ones = tf.ones([n, 1])

    def full() -> tf.Tensor:  # [n, len(QUICK)]
        return q if tops else tf.stack([quick(x, own) for x, own in zip(xs, owns, strict=True)])

    def details() -> tf.Tensor:
        counts = tf.unstack(q[:, len(QUICK)]) if counted else [None] * n
        return tf.stack(
            [_vector_of(_quick_detail(x, b, c), _DETAIL_PARTS) for x, b, c in zip(xs, bounds, counts, strict=True)]
        )

    def masked() -> tf.Tensor:
        fine = tf.concat([_from_quick(full(), sizes), details()], 1)
        ok = tf.reduce_all(tf.math.is_finite(fine), axis=1)
        bad = tf.stack([_vector_of(_masked(x, own, b), _MEASURED) for x, own, b in zip(xs, owns, bounds, strict=True)])
        return tf.concat([tf.where(ok[:, None], fine, bad), ones], 1)

    def with_details() -> tf.Tensor:  # a sum of squares that overflowed goes the masked (scaled) way too
        everything = tf.concat([_from_quick(full(), sizes), details()], 1)
        return tf.cond(_all_finite(everything), lambda: tf.concat([everything, ones], 1), masked)

    def without() -> tf.Tensor:  # a strided-out step: the every-step columns only
        if tops:
            return tf.concat([_from_quick(q, sizes), tf.zeros([n, len(_DETAIL_PARTS)]), ones], 1)
        zeros = tf.zeros([n])
        base = tf.stack([zeros, q[:, 0], sizes, tf.ones([n]), zeros, zeros], 1)  # no top, constant, in_top
        return tf.concat([base, tf.zeros([n, len(_DETAIL_PARTS) + 1])], 1)

    # A light step (details decided on the host, none this step) has no tf.cond at all: a cond here costs
    # ~2 % of a short CPU step even untaken. A non-finite output then shows as its sum (act_mean NaN or
    # +-Inf, act_frac_nonfinite NaN: present, fraction not measured); see ``fields``. A detail step has
    # one cond, on the quick and detail values together (the detail reductions run on every finite step
    # anyway); under an in-graph step counter a first cond on the quick values decides.
    if detail is False:
        measured = without()
    elif detail is True:
        measured = with_details()
    else:
        measured = tf.cond(_all_finite(q), lambda: tf.cond(detail, with_details, without), masked)
    return tf.concat([measured, tf.stack([sizes, rows], 1)], 1)


def _all_finite(values: tf.Tensor) -> tf.Tensor:
    return tf.reduce_all(tf.math.is_finite(values))


def _from_quick(q: tf.Tensor, sizes: tf.Tensor) -> tf.Tensor:
    """The every-step parts (``_MEASURED`` order up to ``in_top``) of finite outputs from their quick values."""
    top, bottom = q[:, 0], q[:, 1]
    return tf.stack(
        [
            tf.maximum(tf.abs(top), tf.abs(bottom)),
            q[:, 2],
            sizes,
            tf.ones_like(top),
            tf.cast(tf.equal(top, bottom), tf.float32),
            q[:, 3],
        ],
        1,
    )


def _vector_of(parts: Parts, keys: Sequence[str]) -> tf.Tensor:
    return tf.stack([parts[k] for k in keys])


def _quick_detail(x: tf.Tensor, bounds: Bounds, zero_var: tf.Tensor | None = None) -> Parts:
    return {
        "s2": 2.0 * tf.nn.l2_loss(x),
        "zero_var": _zero_var_rows(x, masked=False) if zero_var is None else zero_var,
        "nonzero": _nonzero(x),
        "saturated": _saturated(x, bounds),
    }


def _masked(x: tf.Tensor, own: Sequence[tf.Tensor], bounds: Bounds) -> Parts:
    finite = tf.math.is_finite(x)
    scale = safe_scale(tf.reduce_max(tf.where(finite, tf.abs(x), 0.0)))
    y = tf.where(finite, x, 0.0) / scale
    top, bottom = tf.reduce_max(tf.where(finite, x, -INF)), tf.reduce_min(tf.where(finite, x, INF))
    return {
        "top": _max_abs(x),
        "s1": tf.reduce_sum(y),
        "finite": tf.reduce_sum(tf.cast(finite, tf.float32)),
        "scale": scale,
        "constant": tf.cast(tf.equal(top, bottom), tf.float32),
        "in_top": _top_of([_max_abs(t) for t in own]),
        "s2": 2.0 * tf.nn.l2_loss(y),
        "zero_var": _zero_var_rows(x, masked=True),
        "nonzero": _nonzero(x),
        "saturated": _saturated(x, bounds),
    }


def _nonzero(x: tf.Tensor) -> tf.Tensor:
    """The number of non-zero entries (NaN counts), as ``count_nonzero``: a float→bool cast is several
    times faster on CPU than its ``not_equal(x, 0)`` (measured: ~10 µs against ~120 µs for 256×256)."""
    return tf.reduce_sum(tf.cast(tf.cast(x, tf.bool), tf.float32))


def _top_of(tops: Sequence[tf.Tensor]) -> tf.Tensor:
    if not tops:
        return tf.constant(0.0)
    return tops[0] if len(tops) == 1 else tf.reduce_max(tf.stack(tops))


def _zero_var_rows(x: tf.Tensor, masked: bool) -> tf.Tensor:
    """Rows (samples) whose values are all equal; 0.0 when a row holds a single value."""
    rows = _rows(x)
    if rows is None:
        return tf.constant(0.0)
    top, bottom = rows, rows
    if masked:  # a row holding NaN has no variance to speak of: never counted
        nan = tf.math.is_nan(rows)
        top, bottom = tf.where(nan, INF, rows), tf.where(nan, -INF, rows)
    return tf.reduce_sum(tf.cast(tf.equal(tf.reduce_max(top, 1), tf.reduce_min(bottom, 1)), tf.float32))


def _rows(x: tf.Tensor) -> tf.Tensor | None:
    """``x`` as a ``[samples, values]`` matrix; None when a sample has fewer than two values."""
    if x.shape.rank is None or x.shape.rank < 2 or x.shape[1:].num_elements() == 1:
        return None
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _max_abs(x: tf.Tensor) -> tf.Tensor:
    """max |x| over the non-NaN entries: +Inf if any entry is ±Inf."""
    return tf.reduce_max(tf.where(tf.math.is_nan(x), 0.0, tf.abs(x)))


def _saturated(x: tf.Tensor, bounds: Bounds) -> tf.Tensor:
    if bounds is None:
        return tf.constant(0.0)
    low, high = bounds
    at_bound = tf.logical_or(x <= low + _SATURATION_EPS, x >= high - _SATURATION_EPS)
    return tf.reduce_sum(tf.cast(at_bound, tf.float32))


# ---------------------------------------------------------------------- finishing (one value per output)


def columns(matrix: tf.Tensor) -> Parts:
    """The :func:`parts` matrix as one vector per part."""
    return dict(zip(PARTS, tf.unstack(matrix, axis=1), strict=True))


def fields(sources: Sequence[Sequence[int]], p: Parts, wanted: Sequence[str] = FIELDS) -> Parts:
    """The ``act_*`` statistics and ``in_max_abs`` per output from the :func:`columns` of :func:`parts`.

    ``sources[i]``: positions (in the stack) of the watched layers whose outputs output ``i`` read.
    ``wanted``: the fields to compute (a light step's parts carry only some; see :func:`measured_fields`).
    """
    n = tf.maximum(p["n"], 1.0)
    mean_y = p["s1"] / p["finite"]  # over the finite entries; NaN when there are none

    def std() -> tf.Tensor:
        spread = p["scale"] * tf.sqrt(tf.maximum(p["s2"] / p["finite"] - mean_y * mean_y, 0.0))
        return tf.where(p["constant"] > 0.0, 0.0, spread)

    make: dict[str, Callable[[], tf.Tensor]] = {
        "act_mean": lambda: p["scale"] * mean_y,
        "act_std": std,
        "act_max_abs": lambda: p["top"],
        "act_frac_zero": lambda: (n - p["nonzero"]) / n,
        # s1 is finite whenever the entries were counted (finite step, or masked and scaled); a light
        # step's non-finite sum: non-finite entries whose number was not measured
        "act_frac_nonfinite": lambda: tf.where(tf.math.is_finite(p["s1"]), (p["n"] - p["finite"]) / n, float("nan")),
        "act_frac_saturated": lambda: p["saturated"] / n,
        "act_frac_zero_var": lambda: p["zero_var"] / tf.maximum(p["rows"], 1.0),
        "in_max_abs": lambda: _in_max_abs(sources, p["top"], p["in_top"]),
    }
    return {name: make[name]() for name in wanted}


def measured_fields(detail: Any, tops: bool) -> tuple[str, ...]:
    """The fields :func:`parts` can carry: all of them, except on a light step (``detail`` False), which
    has the every-step fields and, where the quick vectors hold max and min, ``TOPS``."""
    if detail is not False:
        return FIELDS
    return (*EVERY_STEP, *TOPS) if tops else EVERY_STEP


def _in_max_abs(sources: Sequence[Sequence[int]], top: tf.Tensor, own: tf.Tensor) -> tf.Tensor:
    if not any(sources):
        return own
    if all(len(s) <= 1 for s in sources):  # a chain: one gather for all
        picked = tf.gather(top, [s[0] if s else 0 for s in sources])
        return tf.maximum(own, tf.where(tf.constant([bool(s) for s in sources]), picked, 0.0))
    return tf.stack(
        [tf.maximum(own[i], tf.reduce_max(tf.gather(top, list(s)))) if s else own[i] for i, s in enumerate(sources)]
    )
