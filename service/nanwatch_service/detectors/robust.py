"""Vectorized robust statistics over trailing windows: rolling median/MAD z-scores and the forecast.

Every function takes a *series*: a run's recent history followed by the ``n`` values of the batch being
processed, NaN where a value is absent or unusable. Results have one entry per batch record and depend only
on the series, never on how records were split into batches.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

FloatArray = npt.NDArray[np.float64]

MAD_TO_SIGMA: Final = 1.4826
"""MAD of a normal sample times this is its standard deviation."""


def trailing(series: FloatArray, n: int, width: int, *, include_current: bool) -> FloatArray:
    """For each of the last ``n`` entries, the ``width`` values up to it, shape ``(n, width)``.

    With ``include_current`` a row ends at its record, else just before it. Missing history is NaN.
    """
    history = len(series) - n
    padded = np.concatenate([np.full(width, np.nan), series])
    first = history + 1 if include_current else history
    return sliding_window_view(padded, width)[first : first + n]


def nan_median_rows(
    rows: npt.NDArray[np.floating[Any]], count: npt.NDArray[np.intp] | None = None
) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """Median of each row ignoring NaN (NaN for an empty row), and the count of values used."""
    ordered = np.sort(rows, axis=1)  # NaN sorts last
    if count is None:
        count = np.count_nonzero(~np.isnan(rows), axis=1)
    lo = np.maximum(count - 1, 0) // 2
    hi = count // 2 - (count == 0)
    index = np.arange(len(rows))
    median = 0.5 * (ordered[index, lo] + ordered[index, np.maximum(hi, 0)])
    return np.where(count > 0, median, np.nan).astype(np.float64), count


def robust_z(
    series: FloatArray,
    n: int,
    window: int,
    *,
    min_history: int,
    scale_floor: float,
    relative_floor: float = 0.0,
    only: npt.NDArray[np.bool_] | None = None,
) -> FloatArray:
    """Robust z of each of the last ``n`` values against the ``window`` values before it (of those ``only``
    marks, when given; NaN for the others).

    ``(x - median) / max(1.4826 * MAD, scale_floor, relative_floor * |median|)``; NaN until ``min_history``
    finite values precede (the warm-up), and for a current value that is NaN. The floors keep a flat
    plateau, whose MAD is zero, from turning a negligible wiggle into an enormous z.
    """
    current = series[len(series) - n :]
    z = np.full(n, np.nan)
    todo = ~np.isnan(current) if only is None else ~np.isnan(current) & only
    if not todo.any():
        return z
    # float32 halves the cost of the sorts; a robust z needs nowhere near 7 significant digits
    with np.errstate(over="ignore"):
        rows = trailing(series, n, window, include_current=False)[todo].astype(np.float32)
    median, count = nan_median_rows(rows)
    mad, _ = nan_median_rows(np.abs(rows - median[:, None].astype(np.float32)), count)
    scale = np.maximum(np.maximum(MAD_TO_SIGMA * mad, scale_floor), relative_floor * np.abs(median))
    z[todo] = np.where(count >= min_history, (current[todo] - median) / scale, np.nan)
    return z


def window_median(series: FloatArray, n: int, window: int) -> FloatArray:
    """Median of the ``window`` values before each of the last ``n`` values (NaN with no history)."""
    median, _ = nan_median_rows(trailing(series, n, window, include_current=False))
    return median


def beyond_tail(series: FloatArray, n: int, window: int, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """For the batch records ``rows``: is the value past the window's largest by as much again?

    ``x - max ≥ max - median`` over the ``window`` values before it. A heavy-tailed but steady series (a
    batch with an outlier every few steps) has already shown how far it goes; a spike must clear that.
    """
    history = trailing(series, n, window, include_current=False)[rows]
    current = series[len(series) - n :][rows]
    median, count = nan_median_rows(history)
    with np.errstate(invalid="ignore"):
        largest = np.max(np.where(np.isnan(history), -np.inf, history), axis=1)
        beyond: npt.NDArray[np.bool_] = (count == 0) | (current - largest >= largest - median)
    return beyond
