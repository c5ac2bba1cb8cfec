"""Activation statistics of the watched layers, from the outputs the training step's forward pass made.

``measure`` runs where a layer's output is made (inside the layer's wrapped ``call``), so each output is
reduced to a dozen scalars at once and nothing of ours keeps the big tensor alive until the end of the
step (that would cost the allocator its buffer reuse). Two tiers, so that a stride thins out the costly
part without ever missing a non-finite value:

- every step (``EVERY_STEP``): ``act_max_abs``, ``act_mean``, ``act_frac_nonfinite`` and
  ``in_max_abs``, from three plain reductions (max, min, sum); an input that is another watched layer's
  output is not read again (that layer's ``act_max_abs`` is its max);
- detail steps (``DETAIL``): ``act_std``, ``act_frac_zero``, ``act_frac_saturated``,
  ``act_frac_zero_var``.

The quick formulas assume finite values; when a quick result is not finite (a NaN or Inf entry, or a
sum that overflowed) the masked ones run instead, in a ``tf.cond`` per output: mean and std over the
finite entries, max |x| +Inf when any entry is ±Inf, a row holding NaN never counted as zero-variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import tensorflow as tf

from nanwatch.keras._norms import INF, f32, safe_scale

EVERY_STEP: Final = ("act_mean", "act_max_abs", "act_frac_nonfinite", "in_max_abs")
DETAIL: Final = ("act_std", "act_frac_zero", "act_frac_saturated", "act_frac_zero_var")
_DETAIL_PARTS: Final = ("s2", "zero_var", "nonzero", "saturated")
_MEASURED: Final = ("top", "s1", "finite", "scale", "constant", "in_top", *_DETAIL_PARTS)
PARTS: Final = (*_MEASURED, "n", "rows")
"""The order of the parts in the vector :func:`measure` returns."""
_SATURATION_EPS: Final = 1e-7
Parts = dict[str, tf.Tensor]


def measure(output: Any, inputs: Sequence[Any], bounds: tuple[float, float] | None, detail: Any = True) -> tf.Tensor:
    """The parts of one output as one vector (``PARTS`` order); ``inputs``: the layer inputs that no
    watched layer produced.

    ``detail``: True, or a boolean tensor (a stride's step test; the detail parts are 0 when False).
    The parts travel as one vector so that each ``tf.cond`` has few inputs and outputs: on CPU every op
    and every branch input costs microseconds, more than the reductions themselves on small outputs.
    """
    x, own = f32(output), [f32(t) for t in inputs]
    quick = _quick(x, own)
    if detail is True:
        quick.update(_quick_detail(x, bounds))
    else:
        zeros = tf.zeros([len(_DETAIL_PARTS)])
        detail_parts = tf.cond(detail, lambda: _vector_of(_quick_detail(x, bounds), _DETAIL_PARTS), lambda: zeros)
        quick.update(zip(_DETAIL_PARTS, tf.unstack(detail_parts), strict=True))
    quick_vector = _vector_of(quick, _MEASURED)
    ok = tf.reduce_all(tf.math.is_finite(quick_vector))
    parts = tf.cond(ok, lambda: quick_vector, lambda: _vector_of(_masked(x, own, bounds), _MEASURED))
    rows = tf.cast(tf.shape(x)[0], tf.float32) if x.shape.rank else tf.constant(1.0)
    return tf.concat([parts, tf.stack([tf.cast(tf.size(x), tf.float32), rows])], 0)


def _vector_of(parts: Parts, keys: Sequence[str]) -> tf.Tensor:
    return tf.stack([parts[k] for k in keys])


def _quick(x: tf.Tensor, own: Sequence[tf.Tensor]) -> Parts:
    top, bottom = tf.reduce_max(x), tf.reduce_min(x)
    tops = [tf.maximum(tf.abs(tf.reduce_max(t)), tf.abs(tf.reduce_min(t))) for t in own]
    return {
        "top": tf.maximum(tf.abs(top), tf.abs(bottom)),
        "s1": tf.reduce_sum(x),  # NaN or Inf anywhere shows here, whatever max and min made of it
        "finite": tf.cast(tf.size(x), tf.float32),
        "scale": tf.constant(1.0),
        "constant": tf.cast(tf.equal(top, bottom), tf.float32),
        "in_top": _top_of(tops),
    }


def _quick_detail(x: tf.Tensor, bounds: tuple[float, float] | None) -> Parts:
    return {
        "s2": 2.0 * tf.nn.l2_loss(x),
        "zero_var": _zero_var_rows(x, masked=False),
        "nonzero": tf.cast(tf.math.count_nonzero(x), tf.float32),
        "saturated": _saturated(x, bounds),
    }


def _masked(x: tf.Tensor, own: Sequence[tf.Tensor], bounds: tuple[float, float] | None) -> Parts:
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
        "nonzero": tf.cast(tf.math.count_nonzero(x), tf.float32),
        "saturated": _saturated(x, bounds),
    }


def _top_of(tops: Sequence[tf.Tensor]) -> tf.Tensor:
    if not tops:
        return tf.constant(0.0)
    return tops[0] if len(tops) == 1 else tf.reduce_max(tf.stack(tops))


def _zero_var_rows(x: tf.Tensor, masked: bool) -> tf.Tensor:
    """Rows (samples) whose values are all equal; 0.0 when a row holds a single value."""
    if x.shape.rank is None or x.shape.rank < 2 or x.shape[1:].num_elements() == 1:
        return tf.constant(0.0)
    rows = tf.reshape(x, [tf.shape(x)[0], -1])
    top, bottom = rows, rows
    if masked:  # a row holding NaN has no variance to speak of: never counted
        nan = tf.math.is_nan(rows)
        top, bottom = tf.where(nan, INF, rows), tf.where(nan, -INF, rows)
    return tf.reduce_sum(tf.cast(tf.equal(tf.reduce_max(top, 1), tf.reduce_min(bottom, 1)), tf.float32))


def _max_abs(x: tf.Tensor) -> tf.Tensor:
    """max |x| over the non-NaN entries: +Inf if any entry is ±Inf."""
    return tf.reduce_max(tf.where(tf.math.is_nan(x), 0.0, tf.abs(x)))


def _saturated(x: tf.Tensor, bounds: tuple[float, float] | None) -> tf.Tensor:
    if bounds is None:
        return tf.constant(0.0)
    low, high = bounds
    at_bound = tf.logical_or(x <= low + _SATURATION_EPS, x >= high - _SATURATION_EPS)
    return tf.reduce_sum(tf.cast(at_bound, tf.float32))


# ---------------------------------------------------------------------- finishing (one value per output)


def stack(measured: Sequence[tf.Tensor]) -> Parts:
    """The :func:`measure` vectors of several outputs as one vector per part."""
    return dict(zip(PARTS, tf.unstack(tf.stack(measured), axis=1), strict=True))


def fields(sources: Sequence[Sequence[int]], p: Parts) -> Parts:
    """The ``act_*`` statistics and ``in_max_abs`` per output from :func:`stack`ed parts.

    ``sources[i]``: positions (in the stack) of the watched layers whose outputs output ``i`` read.
    """
    n = tf.maximum(p["n"], 1.0)
    mean_y = p["s1"] / p["finite"]  # over the finite entries; NaN when there are none
    std = p["scale"] * tf.sqrt(tf.maximum(p["s2"] / p["finite"] - mean_y * mean_y, 0.0))
    return {
        "act_mean": p["scale"] * mean_y,
        "act_std": tf.where(p["constant"] > 0.0, 0.0, std),
        "act_max_abs": p["top"],
        "act_frac_zero": (n - p["nonzero"]) / n,
        "act_frac_nonfinite": (p["n"] - p["finite"]) / n,
        "act_frac_saturated": p["saturated"] / n,
        "act_frac_zero_var": p["zero_var"] / tf.maximum(p["rows"], 1.0),
        "in_max_abs": _in_max_abs(sources, p["top"], p["in_top"]),
    }


def _in_max_abs(sources: Sequence[Sequence[int]], top: tf.Tensor, own: tf.Tensor) -> tf.Tensor:
    if not any(sources):
        return own
    if all(len(s) <= 1 for s in sources):  # a chain: one gather for all
        picked = tf.gather(top, [s[0] if s else 0 for s in sources])
        return tf.maximum(own, tf.where(tf.constant([bool(s) for s in sources]), picked, 0.0))
    return tf.stack(
        [tf.maximum(own[i], tf.reduce_max(tf.gather(top, list(s)))) if s else own[i] for i, s in enumerate(sources)]
    )
