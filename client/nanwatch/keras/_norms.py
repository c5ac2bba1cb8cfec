"""Scale-safe L2 norms and mean |x| of many tensors, grouped into layer columns, in few TensorFlow ops.

On CPU each TensorFlow op costs a few microseconds however small its input, so every tensor gets one
reduction and all finishing arithmetic runs once, vectorised over all tensors (segment ops by column).

A tensor is summarised by parts ``(m, s)``: a scale ``m`` and ``s = sum((x/m)^2) / 2``. The quick parts
use ``m = 1`` (one ``l2_loss``). When any quick part is not finite (a NaN or Inf element, or a square
that overflowed) the caller switches to the safe parts with ``m = max|x|``, so a norm is non-finite only
when an element is. Norms below ~1e-19, whose squares underflow, lose relative precision but stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import tensorflow as tf

INF: Final = float("inf")
Parts = tuple[tf.Tensor, tf.Tensor]


def f32(x: Any) -> tf.Tensor:
    """``x`` as a float32 tensor; a sparse gradient (Embedding) as the rows it touched."""
    if isinstance(x, tf.IndexedSlices):
        x = x.values
    return tf.cast(x, tf.float32)


def safe_scale(m: tf.Tensor) -> tf.Tensor:
    """``m`` where it is a usable divisor (finite and > 0), else 1."""
    return tf.where(tf.logical_and(m > 0.0, tf.math.is_finite(m)), m, tf.ones_like(m))


def all_finite(values: tf.Tensor) -> tf.Tensor:
    """Whether every element of ``values`` is finite."""
    return tf.reduce_all(tf.math.is_finite(values))


def quick_parts(tensors: Sequence[tf.Tensor]) -> Parts:
    """Parts with scale 1: one ``l2_loss`` per tensor."""
    return tf.ones([len(tensors)]), tf.stack([tf.nn.l2_loss(t) for t in tensors])


def safe_parts(tensors: Sequence[tf.Tensor]) -> Parts:
    """Parts scaled by ``m = max|x|``, which cannot overflow."""
    ms, ss = [], []
    for t in tensors:
        m = tf.reduce_max(tf.abs(t))  # XLA on CPU may skip NaN here; NaN then surfaces in the sum
        ms.append(tf.where(tf.math.is_inf(m), INF, m))
        ss.append(tf.nn.l2_loss(t / safe_scale(m)))
    return tf.stack(ms), tf.stack(ss)


def sums_abs(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """``sum |x|`` per tensor (float32; overflows only past 3.4e38, far beyond any live training run)."""
    return tf.stack([tf.reduce_sum(tf.abs(t)) for t in tensors])


def segment_norms(p: Parts, ids: Sequence[int], segments: int) -> tf.Tensor:
    """L2 norm per segment (0.0 for an empty one); +Inf for one holding an Inf, NaN for one holding NaN."""
    m, s = p
    index = tf.constant(list(ids), tf.int32)
    unscaled = tf.get_static_value(m)  # quick parts only (the training callback): a third of the ops
    if unscaled is not None and bool(np.all(unscaled == 1.0)):
        return tf.sqrt(2.0 * tf.math.unsorted_segment_sum(s, index, segments))
    top = tf.maximum(tf.math.unsorted_segment_max(m, index, segments), 0.0)  # empty segments: lowest float
    scale = safe_scale(top)
    ratio = m / tf.gather(scale, index)
    norm = scale * tf.sqrt(2.0 * tf.math.unsorted_segment_sum(ratio * ratio * s, index, segments))
    return tf.where(tf.math.is_inf(top), INF, norm)


def segment_sums(values: tf.Tensor, ids: Sequence[int], segments: int) -> tf.Tensor:
    return tf.math.unsorted_segment_sum(values, tf.constant(list(ids), tf.int32), segments)


def columns(slots: Sequence[int], n_layers: int, offset: int = 0) -> list[int]:
    """Segment ids: ``offset`` + a tensor's layer column, or ``offset + n_layers`` (a spare segment) for a
    tensor of no watched layer."""
    return [offset + (s if 0 <= s < n_layers else n_layers) for s in slots]
