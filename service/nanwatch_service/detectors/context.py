"""The detectors' memory of a run between batches, their settings, and the view of both that a detector
reads while a batch is processed.

The memory is a cache: the last ``window`` values of every series in :data:`series.SERIES` plus two
per-layer rows. Replaying stored records through :meth:`DetectorMemory.append` rebuilds it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import robust
from .batch import Batch, BoolArray, FloatArray
from .forecast import steps_to_limit
from .run_info import RunInfo
from .series import SERIES, forecast_limits


class DetectorMemory:
    """Trailing history of one run: series values and the per-layer rows the detectors compare against."""

    def __init__(self, run: RunInfo, window: int) -> None:
        self.window = window
        self.series: dict[str, FloatArray] = {name: np.empty(0) for name in SERIES}
        self.last_weight_norm = np.full(run.n_layers, np.nan)
        self.varied = np.zeros(run.n_layers, dtype=bool)
        self.last_step: int | None = None

    def append(self, view: BatchView) -> None:
        """Fold a processed batch into the history."""
        for name in SERIES:
            self.series[name] = view.series(name)[-self.window :].copy()
        weight_norm, present = view.batch.layer("weight_norm")
        if present.any():
            self.last_weight_norm = weight_norm[np.flatnonzero(present)[-1]].copy()
        self.varied = view.varied_before()[-1] | view.varies()[-1]
        self.last_step = int(view.batch.steps[-1])


@dataclass
class DetectorSettings:
    """Pipeline-wide parameters the detectors share."""

    horizon: int = 10
    window: int = 128
    min_history: int = 20


class BatchView:
    """A batch together with its run's history; computes shared series, z-scores and forecasts once."""

    def __init__(self, run: RunInfo, batch: Batch, memory: DetectorMemory, settings: DetectorSettings) -> None:
        self.run = run
        self.batch = batch
        self.memory = memory
        self.settings = settings
        self._series: dict[str, FloatArray] = {}
        self._z: dict[tuple[str, float, float], FloatArray] = {}
        """Robust z by ``(series, scale_floor, relative_floor)``."""
        self._medians: dict[str, FloatArray] = {}
        self._forecasts: dict[str, FloatArray] = {}
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per batch: what several detectors (or the pipeline) share."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def n(self) -> int:
        """Records in the batch."""
        return self.batch.n

    def series(self, name: str) -> FloatArray:
        """History of ``name`` followed by this batch's ``n`` values."""
        if name not in self._series:
            fresh = SERIES[name](self.run, self.batch)
            self._series[name] = np.concatenate([self.memory.series[name], fresh])
        return self._series[name]

    def current(self, name: str) -> FloatArray:
        """This batch's values of ``name``."""
        return self.series(name)[-self.n :]

    def z(self, name: str, scale_floor: float, relative_floor: float = 0.0) -> FloatArray:
        """Robust z of each record's ``name`` against the trailing window (NaN during warm-up)."""
        key = (name, scale_floor, relative_floor)
        if key not in self._z:
            self._z[key] = self._robust_z(name, scale_floor, relative_floor)
        return self._z[key]

    def _robust_z(
        self, name: str, scale_floor: float, relative_floor: float, only: BoolArray | None = None
    ) -> FloatArray:
        """:func:`robust.robust_z` of ``name`` with this view's window (for the records ``only`` keeps)."""
        settings = self.settings
        return robust.robust_z(
            self.series(name),
            self.n,
            settings.window,
            min_history=settings.min_history,
            scale_floor=scale_floor,
            relative_floor=relative_floor,
            only=only,
        )

    def spike(self, name: str, threshold: float, scale_floor: float, relative_floor: float = 0.0) -> BoolArray:
        """Per record: robust z of ``name`` above ``threshold`` and the value past the window's tail
        (see :func:`robust.beyond_tail`), so that a steady heavy tail does not count as a spike.

        Past the tail means above the window's largest value (at it, the window would be flat and z 0): a
        record not above the largest value of the stretch of history every record's window holds cannot
        spike, and its z is not computed (when no record is, the usual case, none is)."""
        candidates = self._may_pass_tail(name)
        if not candidates.any():
            return candidates
        z = self._robust_z(name, scale_floor, relative_floor, only=candidates)
        spike: BoolArray = z > threshold
        rows = np.flatnonzero(spike)
        if len(rows):
            spike[rows] = robust.beyond_tail(self.series(name), self.n, self.settings.window, rows)
        return spike

    def _may_pass_tail(self, name: str) -> BoolArray:
        """Per record: whether it is above the largest value of the history every record's window holds."""
        series, n, width = self.series(name), self.n, self.settings.window
        shared = series[max(0, len(series) - 1 - width) : len(series) - n]  # in every record's window
        peak = np.fmax.reduce(shared) if n <= width and len(shared) else np.nan  # fmax: NaN only if all are
        if np.isnan(peak):
            return np.ones(n, dtype=bool)
        reach: BoolArray = series[-n:] > peak
        return reach

    def last_increment(self, name: str) -> FloatArray:
        """Per record, its value of ``name`` minus the one before (NaN where either is missing)."""
        series = self.series(name)
        return np.diff(series[-self.n - 1 :]) if len(series) > self.n else np.diff(series, prepend=np.nan)

    def median(self, name: str) -> FloatArray:
        """Median of ``name`` over the trailing window before each record (NaN without history)."""
        if name not in self._medians:
            self._medians[name] = robust.window_median(self.series(name), self.n, self.settings.window)
        return self._medians[name]

    def forecast(self, name: str) -> FloatArray:
        """Steps until series ``name`` reaches its limit, per record (+inf when not growing)."""
        if name not in self._forecasts:
            limit = forecast_limits(self.run)[name]
            self._forecasts[name] = steps_to_limit(self.series(name), self.n, limit, self.settings.window)
        return self._forecasts[name]

    def previous_weight_norm(self) -> FloatArray:
        """Per record and layer, the weight norm of the record before (the weights this update started from)."""
        weight_norm, present = self.batch.layer("weight_norm")
        rows = np.where(present[:, None], weight_norm, np.nan)
        return np.vstack([self.memory.last_weight_norm[None, :], rows[:-1]])

    def varies(self) -> BoolArray:
        """Per record and layer: the layer's output had a non-zero, finite spread at that step."""
        varies: BoolArray = self.memo("varies", self._varies)
        return varies

    def _varies(self) -> BoolArray:
        std, _ = self.batch.layer("act_std")
        varies: BoolArray = np.isfinite(std) & (std > 0)
        return varies

    def varied_before(self) -> BoolArray:
        """Per record and layer: the layer's output varied at some earlier step of the run."""
        seen = np.logical_or.accumulate(self.varies(), axis=0)
        return np.vstack([self.memory.varied[None, :], self.memory.varied | seen[:-1]])
