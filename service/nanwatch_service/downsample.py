"""Downsampling a series for a plot without hiding what matters: spikes and non-finite values.

The steps are cut into at most ``points`` buckets of equal width. Each bucket keeps its smallest and its
largest finite value, at the steps where they occurred, so a line through them (in step order) has the
same envelope as the line through every step: a one-step spike in 100,000 steps is still drawn. NaN,
+Inf and -Inf are never values of the line (a plot would leave a gap there, or a NaN would poison its
scale); each bucket that holds one reports the first step it did, as a mark of its own kind.

>>> line = downsample(steps, values, present, points=1000)
>>> line.steps, line.values  # at most 2 * points finite points, in step order
>>> line.nan, line.inf, line.neg_inf  # at most points steps each
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Downsampled:
    """A plot-ready series: the finite line, and the steps of each kind of non-finite mark."""

    steps: IntArray
    values: FloatArray
    nan: IntArray
    inf: IntArray
    neg_inf: IntArray

    def to_json(self) -> dict[str, Any]:
        """Plain lists: ``steps``/``values`` for the line; ``nan``/``inf``/``-inf`` for the marks."""
        return {
            "steps": self.steps.tolist(),
            "values": self.values.tolist(),
            "nan": self.nan.tolist(),
            "inf": self.inf.tolist(),
            "-inf": self.neg_inf.tolist(),
        }


def downsample(steps: IntArray, values: FloatArray, present: BoolArray, points: int) -> Downsampled:
    """At most ``points`` buckets of ``values`` (shape ``(n,)``) over ``steps``; rows not ``present`` are
    left out (a value that was never measured is neither a point nor a mark)."""
    if points < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    steps, values = steps[present], values[present]
    bucket = bucket_of(steps, points)
    finite = np.flatnonzero(np.isfinite(values))
    line = finite[_line(steps[finite], values[finite], bucket[finite])]
    marks = [_first_step(steps, bucket, mask) for mask in (np.isnan(values), values == np.inf, values == -np.inf)]
    return Downsampled(steps[line], values[line], *marks)


def bucket_of(steps: IntArray, points: int) -> IntArray:
    """Each step's bucket: ``points`` equal ranges of whole steps from the first step to the last."""
    if not len(steps):
        return np.zeros(0, dtype=np.int64)
    first = int(steps.min())
    width = -(-(int(steps.max()) - first + 1) // points)  # ceiling division: never more than points buckets
    buckets: IntArray = (steps - first) // width
    return buckets


def top_layers(values: FloatArray, present: BoolArray, k: int) -> list[int]:
    """The ``k`` layers (columns of ``values``, shape ``(n, n_layers)``) most worth plotting: first those
    that turned non-finite, earliest first, then those with the largest finite value."""
    rows = values[present]
    if not rows.size:
        return list(range(min(k, values.shape[1])))
    bad = ~np.isfinite(rows)
    first_bad = np.where(bad.any(axis=0), np.argmax(bad, axis=0), len(rows))
    largest = np.max(np.where(bad, -np.inf, rows), axis=0)
    order = np.lexsort((-largest, first_bad))
    return [int(layer) for layer in order[:k]]


def _line(steps: IntArray, values: FloatArray, bucket: IntArray) -> npt.NDArray[np.intp]:
    """Indices of each bucket's smallest and largest value, in step order."""
    smallest = _first_extreme(bucket, values, np.minimum)
    largest = _first_extreme(bucket, values, np.maximum)
    chosen = np.union1d(smallest, largest)
    return chosen[np.argsort(steps[chosen], kind="stable")]


def _first_step(steps: IntArray, bucket: IntArray, mask: BoolArray) -> IntArray:
    """The first step of each bucket where ``mask`` holds."""
    rows = np.flatnonzero(mask)
    firsts: IntArray = np.sort(steps[rows[_first_extreme(bucket[rows], steps[rows], np.minimum)]])
    return firsts


def _first_extreme(bucket: IntArray, key: npt.NDArray[Any], extreme: np.ufunc) -> npt.NDArray[np.intp]:
    """Index of the row holding the ``extreme`` (np.minimum or np.maximum) ``key`` of each bucket, the
    earliest among equals. Runs over the rows once when they come in bucket order, as they do when the
    steps arrived in order."""
    if not len(bucket):
        return np.zeros(0, dtype=np.intp)
    in_order = bool(np.all(bucket[1:] >= bucket[:-1]))
    order = np.arange(len(bucket)) if in_order else np.argsort(bucket, kind="stable")
    bucket, key = bucket[order], key[order]
    starts = np.flatnonzero(np.diff(bucket, prepend=-1))
    best = np.repeat(extreme.reduceat(key, starts), np.diff(np.append(starts, len(bucket))))
    hits = np.flatnonzero(key == best)
    first_hits = hits[np.flatnonzero(np.diff(bucket[hits], prepend=-1))]
    chosen: npt.NDArray[np.intp] = order[first_hits]
    return chosen
