"""overflow_headroom: activations, the gradient norm or the loss near the largest value of their dtype.

The headroom of a value is ``dtype_max / |value|``: float16 (and so ``mixed_float16`` activations) ends at
65504, bfloat16 and float32 near 3.4e38. Under ``headroom`` (100×) it is a warning. It is critical when the
largest activation is forecast to reach the limit within ``horizon`` steps (an overflow forecast), or is
already within ``critical_headroom`` (2×) of it: the first batch twice as large overflows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt, forecast_or_none, hits
from .batch import BoolArray
from .context import BatchView
from .finding import Finding, Severity
from .series import act_headroom, global_grad_norm

HALF_REMEDY = (
    "add BatchNormalization or LayerNormalization before `{name}`, lower the learning rate, or compute this "
    "layer in float32 (`dtype='float32'`); the loss scaler cannot fix an overflow in the forward pass"
)
FULL_REMEDY = "add BatchNormalization before `{name}`, lower the learning rate and clip gradients with `clipnorm=1.0`"


@dataclass(frozen=True)
class OverflowHeadroom:
    """Warning under ``headroom``× room to the dtype limit (or an overflow forecast within
    ``warn_factor × horizon`` steps); critical when the forecast is within ``horizon`` steps."""

    name: ClassVar[str] = "overflow_headroom"
    headroom: float = 100.0
    critical_headroom: float = 2.0
    warn_factor: float = 3.0

    def detect(self, view: BatchView) -> list[Finding]:
        """Findings per layer whose activations, and for the gradient norm and loss, near overflow."""
        findings = self._activations(view)
        findings += self._scalar(view, "gradient norm", global_grad_norm(view.run, view.batch))
        findings += self._scalar(view, "loss", np.abs(view.batch.scalar("loss")[0]))
        return findings

    def _activations(self, view: BatchView) -> list[Finding]:
        max_abs, _ = view.batch.layer("act_max_abs")
        steps = view.forecast("log_act_fraction")
        _, top = act_headroom(view.run, view.batch)
        flagged = self._near(max_abs, view.run.act_limits)
        forecast = steps <= self.warn_factor * view.settings.horizon
        flagged[np.flatnonzero(forecast), top[forecast]] = True
        return [
            self._activation(view, i, layer, float(steps[i]) if layer == top[i] else np.inf)
            for i, layer in hits(flagged)
        ]

    def _near(self, values: np.ndarray, limit: float | np.ndarray) -> BoolArray:
        near: BoolArray = np.isfinite(values) & (values > limit / self.headroom)
        return near

    def _activation(self, view: BatchView, i: int, layer: int, steps: float) -> Finding:
        run = view.run
        value = float(view.batch.layer("act_max_abs")[0][i, layer])
        limit, dtype = float(run.act_limits[layer]), run.act_dtypes[layer]
        room = limit / value if value > 0 else np.inf
        imminent = steps <= view.settings.horizon or room < self.critical_headroom
        severity = Severity.CRITICAL if imminent else Severity.WARNING
        name = run.names[layer]
        message = (
            f"max |activation| of '{name}' is {fmt(value)}, {fmt(room)}× below the {dtype} limit "
            f"{fmt(limit)} (warning under {fmt(self.headroom)}×, critical under "
            f"{fmt(self.critical_headroom)}× headroom)"
        )
        if np.isfinite(steps):
            message += f"; forecast to overflow in {steps:.1f} steps (critical ≤ {view.settings.horizon})"
        remedy = (HALF_REMEDY if dtype in ("float16", "bfloat16") else FULL_REMEDY).format(name=name)
        step = int(view.batch.steps[i])
        return Finding(self.name, severity, step, name, room, self.headroom, message, remedy, forecast_or_none(steps))

    def _scalar(self, view: BatchView, what: str, values: np.ndarray) -> list[Finding]:
        limit, dtype = view.run.grad_limit, view.run.var_dtype
        findings = []
        for i in np.flatnonzero(self._near(values, limit)):
            value = float(values[i])
            message = (
                f"{what} {fmt(value)} is {fmt(limit / value)}× below the {dtype} limit {fmt(limit)} "
                f"(warning under {fmt(self.headroom)}× headroom)"
            )
            remedy = "lower the learning rate (e.g. ÷10) and clip gradients with `clipnorm=1.0`"
            step = int(view.batch.steps[i])
            findings.append(
                Finding(self.name, Severity.WARNING, step, None, limit / value, self.headroom, message, remedy)
            )
        return findings
