"""steps_to_nonfinite: how many steps a growing quantity has left before it passes its dtype's largest value.

The forecast works on the log of the quantity (a gradient norm, a max-abs activation, |loss|) over its last
few steps. It says nothing (+inf) unless the growth is an explosion rather than noise:

- a trend: either the last 3 per-step increments are positive and the rise over the last 4 steps is at
  least 10× (a fast blow-up), or all of the last 8 increments are positive and their rise is at least 10×
  (a steady geometric growth, ×1.4 a step, which never rises 10× within 4 steps); either way with at
  least 2× of it outside the largest single step (one jump is the z-score's business, not a trend);
- the value is the highest of the trailing window, and the rise is at least 3σ of a random walk over
  the trend's steps whose step noise σ is the robust spread (1.4826 × MAD) of the series' earlier
  increments: a batch loss that jumps 10-100× whenever a batch holds an outlier is noisy, not exploding.
  A steady exponential has no spread in its increments, so it passes.

Then the forecast is the smaller of two extrapolations of the increments ``d`` (for a steady growth, seen
only by the 8-step trend, the linear one alone):

- linear at the steepest recent rate: ``gap / max(d of the last 3 steps)``;
- geometric, when the increments themselves grow: each step's increment is ``r`` times the one before,
  ``r`` the median ratio of consecutive positive increments among the last 4 (1 ≤ r ≤ 4), and
  ``d·r + d·r² + … ≥ gap``.

The geometric term keeps a double-exponential blow-up (the log grows exponentially, as when every layer
of a deep ReLU net is multiplied by weights the last update also enlarged) from being forecast too late;
a linear fit on the log would be several steps late. Fitting the increments rather than ``log(log x)``
keeps it independent of units and offsets and defined for quantities below 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from .robust import FloatArray, nan_median_rows, trailing

INCREMENTS: Final = 4
MIN_RISE: Final = math.log(10.0)
MIN_SPREAD: Final = math.log(2.0)
MAX_ACCELERATION: Final = 4.0
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Trend:
    """A kind of growth worth a forecast: over the last ``span`` increments, the last ``rising`` of them
    positive and the whole rise at least ``MIN_RISE``."""

    span: int
    rising: int
    accelerates: bool
    """Whether the forecast also extrapolates a growing increment (geometric): a steady growth's
    increments only wobble, and their ratios would read as acceleration."""

    @property
    def noise_multiple(self) -> float:
        """3σ of a ``span``-step random walk, σ = 1.4826 MAD of the earlier increments."""
        return 3.0 * math.sqrt(self.span) * 1.4826


TRENDS: Final = (Trend(span=INCREMENTS, rising=3, accelerates=True), Trend(span=8, rising=8, accelerates=False))
"""A fast blow-up (10× within 4 steps), and a steady geometric growth (10× within 8 steps, every one up)."""


def steps_to_limit(log_series: FloatArray, n: int, log_limit: float, window: int = 128) -> FloatArray:
    """Forecast for each of the last ``n`` values of ``log_series``: steps until it reaches ``log_limit``."""
    longest = max(trend.span for trend in TRENDS)
    steps = np.full(n, np.inf)
    if not _rose_enough(log_series[-(n + longest) :], longest):
        return steps  # the usual case: nothing grew 10x within the stretch any record looks back on
    values = trailing(log_series, n, longest + 1, include_current=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        increments = np.diff(values, axis=1)
        gap = np.maximum(log_limit - values[:, -1], 0.0)
        for trend in TRENDS:
            rows = _growing(log_series, n, window, increments[:, -trend.span :], trend)
            if len(rows):
                forecast = _forecast(increments[rows, -INCREMENTS:], gap[rows], accelerating=trend.accelerates)
                steps[rows] = np.minimum(steps[rows], forecast)
    return steps


def _rose_enough(tail: FloatArray, span: int) -> bool:
    """Whether the positive steps within some ``span`` consecutive increments of ``tail`` add up to
    ``MIN_RISE``: no trend over at most ``span`` increments rises more than its positive steps."""
    increments = np.diff(tail)
    gains = np.concatenate([[0.0], np.cumsum(np.where(increments > 0, increments, 0.0))])
    within = gains[span:] - gains[:-span] if len(gains) > span else gains[-1:]
    return bool(within.max() >= MIN_RISE)


def _growing(log_series: FloatArray, n: int, window: int, increments: FloatArray, trend: Trend) -> npt.NDArray[np.intp]:
    """The records at which ``trend`` holds."""
    positive = increments > 0
    gains = np.where(positive, increments, 0.0)
    rows = np.flatnonzero(gains.sum(axis=1) >= MIN_RISE)  # the rise is at most the gains: usually none
    if len(rows):
        rise = np.nansum(increments[rows], axis=1)
        rows = rows[_rising(positive[rows], gains[rows], rise, trend.rising)]
    if len(rows):
        rise = np.nansum(increments[rows], axis=1)
        rows = rows[_unusual(log_series, n, window, rows, rise, trend)]
    return rows


def _forecast(increments: FloatArray, gap: FloatArray, *, accelerating: bool) -> FloatArray:
    linear = _linear(increments, gap)
    return np.minimum(linear, _geometric(increments, gap)) if accelerating else linear


def _rising(positive: BoolArray, gains: FloatArray, rise: FloatArray, last: int) -> BoolArray:
    spread = gains.sum(axis=1) - gains.max(axis=1)  # the growth outside the largest single step
    rising: BoolArray = positive[:, -last:].all(axis=1) & (rise >= MIN_RISE) & (spread >= MIN_SPREAD)
    return rising


def _unusual(
    log_series: FloatArray, n: int, window: int, rows: npt.NDArray[np.intp], rise: FloatArray, trend: Trend
) -> BoolArray:
    """A new high of the window, risen well beyond the series' own step-to-step noise."""
    history = trailing(log_series, n, window, include_current=False)[rows]
    current = log_series[len(log_series) - n :][rows]
    earlier = np.diff(history[:, : 1 - trend.span], axis=1)
    median, count = nan_median_rows(earlier)
    mad, _ = nan_median_rows(np.abs(earlier - median[:, None]), count)
    noise = np.where(count >= 3, mad, 0.0)
    highest = np.max(np.where(np.isnan(history), -np.inf, history), axis=1)
    unusual: BoolArray = (current > highest) & (rise >= trend.noise_multiple * noise)
    return unusual


def _linear(increments: FloatArray, gap: FloatArray) -> FloatArray:
    steps: FloatArray = gap / np.nanmax(increments[:, -3:], axis=1)
    return steps


def _geometric(increments: FloatArray, gap: FloatArray) -> FloatArray:
    last = increments[:, -1]
    earlier, later = increments[:, :-1], increments[:, 1:]
    ratio, count = nan_median_rows(np.where((earlier > 0) & (later > 0), later / earlier, np.nan))
    ratio = np.clip(np.where(count > 0, ratio, 1.0), 1.0, MAX_ACCELERATION)
    growing = ratio > 1.0 + 1e-9
    safe = np.where(growing, ratio, 2.0)
    steps: FloatArray = np.where(growing, np.log1p(gap * (safe - 1.0) / (last * safe)) / np.log(safe), gap / last)
    return steps
