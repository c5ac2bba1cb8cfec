"""loss_spike: the per-batch loss jumps far above its recent level, or grows toward overflow.

A robust z of the loss against the median/MAD of the last ``window`` steps (after a warm-up) gives the
warning; the forecast of steps until |loss| reaches the largest value of its dtype gives the critical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt, forecast_or_none
from .context import BatchView
from .finding import Finding, Severity

SPIKE_REMEDY = (
    "lower the learning rate, clip gradients with `clipnorm=1.0`, and check the batch for outliers or "
    "mislabelled samples"
)
DIVERGING_REMEDY = "the loss is diverging: lower the learning rate (e.g. ÷10) and clip gradients with `clipnorm=1.0`"


@dataclass(frozen=True)
class LossSpike:
    """Warning at robust z > ``z_threshold`` or a forecast within ``warn_factor × horizon`` steps;
    critical when |loss| is forecast to overflow within ``horizon`` steps."""

    name: ClassVar[str] = "loss_spike"
    z_threshold: float = 6.0
    relative_floor: float = 0.05  # a flat loss must still move by 30 % to reach z = 6
    scale_floor: float = 1e-12
    warn_factor: float = 3.0

    def detect(self, view: BatchView) -> list[Finding]:
        """Findings for the records whose loss spikes or diverges."""
        spike = view.spike("loss", self.z_threshold, self.scale_floor, self.relative_floor)
        steps = view.forecast("log_abs_loss")
        flagged = spike | (steps <= self.warn_factor * view.settings.horizon)
        if not flagged.any():
            return []
        z = view.z("loss", self.scale_floor, self.relative_floor)
        return [
            self._finding(view, int(i), float(z[i]), bool(spike[i]), float(steps[i])) for i in np.flatnonzero(flagged)
        ]

    def _finding(self, view: BatchView, i: int, z: float, spike: bool, steps: float) -> Finding:
        horizon = view.settings.horizon
        loss = float(view.current("loss")[i])
        step = int(view.batch.steps[i])
        severity = Severity.CRITICAL if steps <= horizon else Severity.WARNING
        if severity == Severity.WARNING and spike:
            median = float(view.median("loss")[i])
            message = f"loss {fmt(loss)} is {fmt(z)} robust σ above its recent median {fmt(median)}"
            message += f" (threshold z > {fmt(self.z_threshold)})"
            return Finding(
                self.name, severity, step, None, z, self.z_threshold, message, SPIKE_REMEDY, forecast_or_none(steps)
            )
        limit = horizon if severity == Severity.CRITICAL else self.warn_factor * horizon
        growth = math.exp(float(view.last_increment("log_abs_loss")[i]))
        message = f"loss {fmt(loss)} growing ×{fmt(growth)} in the last step, forecast to overflow "
        message += f"{view.run.var_dtype} in {steps:.1f} steps (threshold ≤ {fmt(limit)} steps)"
        return Finding(self.name, severity, step, None, steps, float(limit), message, DIVERGING_REMEDY, steps)
