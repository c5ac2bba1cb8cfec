"""grad_explosion: the global gradient norm jumps far above its recent level, or grows toward overflow.

Two signals on log(grad_norm): a robust z against the median/MAD of the last ``window`` steps (after a
warm-up), and the forecast of steps until the norm reaches the largest value of the gradient dtype.
A forecast within ``horizon`` steps is critical, so that the default halt policy stops the job while its
weights are still finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt, forecast_or_none
from .context import BatchView
from .finding import Finding, Severity
from .series import global_grad_norm

REMEDY = (
    "clip gradients with `clipnorm=1.0` in the optimizer, lower the learning rate (e.g. ÷10), "
    "or add BatchNormalization between the layers"
)


@dataclass(frozen=True)
class GradExplosion:
    """Warning at robust z > ``z_threshold`` or a forecast within ``warn_factor × horizon`` steps;
    critical when the forecast is within ``horizon`` steps."""

    name: ClassVar[str] = "grad_explosion"
    z_threshold: float = 6.0
    scale_floor: float = 0.1  # log units: a plateau must still move ×1.8 to reach z = 6
    warn_factor: float = 3.0

    def detect(self, view: BatchView) -> list[Finding]:
        """Findings for the records whose gradient norm is abnormal or forecast to overflow."""
        spike = view.spike("log_grad_norm", self.z_threshold, self.scale_floor)
        steps = view.forecast("log_grad_norm")
        flagged = spike | (steps <= self.warn_factor * view.settings.horizon)
        if not flagged.any():
            return []
        z = view.z("log_grad_norm", self.scale_floor)
        return [
            self._finding(view, int(i), float(z[i]), bool(spike[i]), float(steps[i])) for i in np.flatnonzero(flagged)
        ]

    def _finding(self, view: BatchView, i: int, z: float, spike: bool, steps: float) -> Finding:
        horizon = view.settings.horizon
        severity = Severity.CRITICAL if steps <= horizon else Severity.WARNING
        if severity == Severity.CRITICAL or not spike:
            value, threshold = steps, float(horizon if severity == Severity.CRITICAL else self.warn_factor * horizon)
        else:
            value, threshold = z, self.z_threshold
        message = _describe(view, i, z, steps) + f" (threshold: z > {fmt(self.z_threshold)} or a forecast"
        message += f" ≤ {fmt(self.warn_factor * horizon)} steps; critical ≤ {horizon})"
        step = int(view.batch.steps[i])
        return Finding(self.name, severity, step, None, value, threshold, message, REMEDY, forecast_or_none(steps))


def _describe(view: BatchView, i: int, z: float, steps: float) -> str:
    norm = float(global_grad_norm(view.run, view.batch)[i])
    text = f"global gradient norm {fmt(norm)}"
    if not math.isnan(z):
        median = float(view.median("log_grad_norm")[i])
        text += f" (robust z {fmt(z)} against its median {fmt(math.exp(median))} over the last steps)"
    if math.isfinite(steps):
        growth = math.exp(float(view.last_increment("log_grad_norm")[i]))
        text += f"; growing ×{fmt(growth)} in the last step, forecast to overflow {view.run.var_dtype}"
        text += f" in {steps:.1f} steps"
    return text + _largest_layer(view, i)


def _largest_layer(view: BatchView, i: int) -> str:
    norms, present = view.batch.layer("grad_norm")
    weighted = np.flatnonzero(view.run.has_weights)
    if not present[i] or len(weighted) == 0:
        return ""
    row = np.where(np.isfinite(norms[i, weighted]), norms[i, weighted], -np.inf)
    top = int(weighted[int(np.argmax(row))])
    return f"; largest in '{view.run.names[top]}' ({fmt(float(norms[i, top]))})"
