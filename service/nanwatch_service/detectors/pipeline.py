"""Pipeline: one run's detection state; turns batches of step records into findings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from nanwatch.columns import StepColumns

from .activations import DeadRelu, ZeroVariance
from .amplification import Amplification
from .base import Detector
from .batch import Batch
from .context import BatchView, DetectorMemory, DetectorSettings
from .explosion import GradExplosion
from .finding import Finding
from .gradients import UpdateRatio, VanishingGradient
from .loss import LossSpike
from .loss_scale import LossScale
from .nonfinite import Nonfinite
from .nonfinite_masks import holds_nonfinite
from .overflow import OverflowHeadroom
from .run_info import RunInfo
from .saturation import Saturation

DEFAULT_DETECTORS: Final[tuple[Detector, ...]] = (
    Nonfinite(),
    GradExplosion(),
    LossSpike(),
    OverflowHeadroom(),
    Amplification(),
    ZeroVariance(),
    DeadRelu(),
    Saturation(),
    VanishingGradient(),
    UpdateRatio(),
    LossScale(),
)
"""Every detector of the catalog with its default thresholds, in the order findings are listed."""

Records = Sequence[Mapping[str, Any]] | StepColumns
"""What a pipeline takes: a batch's columns, or protocol-1 records (tests, stores holding records one per row)."""

FORECAST_SERIES: Final = ("log_grad_norm", "log_act_fraction", "log_abs_loss")
"""Growing quantities whose forecast makes up :attr:`Pipeline.steps_to_nonfinite`."""


class Pipeline:
    """Per-run detection state. Built from the decoded run registration (``protocol.decode_run`` output).

    ``horizon`` is the forecast (in steps) at or under which a growing quantity is critical; ``window`` the
    number of trailing steps behind the robust statistics. Findings depend only on the sequence of
    records, not on how they were split into batches.
    """

    def __init__(
        self,
        run: Mapping[str, Any],
        *,
        detectors: tuple[Detector, ...] = DEFAULT_DETECTORS,
        horizon: int = 10,
        window: int = 128,
        min_history: int = 20,
    ) -> None:
        self.run = RunInfo(run)
        self.detectors = detectors
        self.settings = DetectorSettings(horizon=horizon, window=window, min_history=min_history)
        self._memory = DetectorMemory(self.run, window)
        self._steps_to_nonfinite = math.inf

    def process(self, records: Records) -> list[Finding]:
        """Findings active at each of ``records`` (columns, or decoded protocol-1 records, in arrival order)."""
        view = self._view(records)
        if not view.n:
            return []
        with np.errstate(all="ignore"):  # NaN, Inf, 1e308 and subnormals are data here, not accidents
            findings = [finding for detector in self.detectors for finding in detector.detect(view)]
            self._advance(view)
        order = {int(step): i for i, step in enumerate(view.batch.steps)}
        return sorted(findings, key=lambda finding: order[finding.step])

    def warm(self, records: Records) -> None:
        """Rebuild the run's history from stored records (oldest first) without reporting anything."""
        view = self._view(records)
        if view.n:
            with np.errstate(all="ignore"):
                self._advance(view)

    @property
    def steps_to_nonfinite(self) -> float:
        """Forecast steps until a non-finite value at the last processed step (``math.inf`` when none)."""
        return self._steps_to_nonfinite

    @property
    def last_step(self) -> int | None:
        """The step of the last record processed or warmed."""
        return self._memory.last_step

    def _view(self, records: Records) -> BatchView:
        return BatchView(self.run, Batch.of(records, self.run.n_layers), self._memory, self.settings)

    def _advance(self, view: BatchView) -> None:
        forecasts = [float(view.forecast(name)[-1]) for name in FORECAST_SERIES]
        self._steps_to_nonfinite = 0.0 if holds_nonfinite(view)[-1] else min(forecasts)
        self._memory.append(view)
