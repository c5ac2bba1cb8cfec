"""loss_scale: a mixed-precision dynamic loss scale that keeps halving, or falls under 1.

The scaler skips a step whose gradients overflowed and halves its scale: one skip now and then is its
normal operation, and so is a run of skips at start-up while the initial scale (2**15) comes down to what
the gradients allow. Repeated halvings after training has applied steps, or a scale under 1 (gradients
overflow even unscaled), mean something upstream overflows; skipped steps do not train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt
from .batch import FloatArray
from .context import BatchView
from .finding import Finding, Severity

REMEDY = (
    "keep the loss scaler on and remove the overflow behind it: lower the learning rate, clip gradients with "
    "`clipnorm=1.0`, and compute layers that overflow float16 in float32 (`dtype='float32'`)"
)


@dataclass(frozen=True)
class LossScale:
    """Warning at ``halvings`` or more halvings within ``window`` steps once past start-up, or a scale
    under ``floor``."""

    name: ClassVar[str] = "loss_scale"
    halvings: int = 3
    window: int = 16
    floor: float = 1.0

    def detect(self, view: BatchView) -> list[Finding]:
        """A finding per record whose scale collapses."""
        scale = view.series("loss_scale")
        if np.isnan(scale[-view.n :]).all():
            return []
        count, started = self._recent_halvings(scale, view.series("skipped"), view)
        current = scale[-view.n :]
        flagged = ((count >= self.halvings) & started) | (current < self.floor)
        return [self._finding(view, int(i), float(current[i]), int(count[i])) for i in np.flatnonzero(flagged)]

    def _recent_halvings(
        self, scale: FloatArray, skipped: FloatArray, view: BatchView
    ) -> tuple[np.ndarray, np.ndarray]:
        halved = (skipped == 1.0) | (scale < np.concatenate([[np.nan], scale[:-1]]))
        applied = (skipped == 0.0) & ~np.isnan(scale)
        # start-up: the skips before the first applied step only bring the initial scale down
        past_startup = np.concatenate([[False], np.cumsum(applied)[:-1] > 0])
        past_startup |= len(scale) - view.n >= view.settings.window
        total = np.concatenate([[0], np.cumsum(halved & past_startup)])
        positions = np.arange(len(scale) - view.n, len(scale))
        count = total[positions + 1] - total[np.maximum(positions + 1 - self.window, 0)]
        return count, past_startup[positions]

    def _finding(self, view: BatchView, i: int, scale: float, count: int) -> Finding:
        message = f"loss scale {fmt(scale)} halved {count} times in the last {self.window} steps"
        if scale < self.floor:
            message += f" and is under {fmt(self.floor)}: gradients overflow even unscaled"
            value, threshold = scale, self.floor
        else:
            message += f" (threshold {self.halvings}); skipped steps do not train"
            value, threshold = float(count), float(self.halvings)
        step = int(view.batch.steps[i])
        return Finding(self.name, Severity.WARNING, step, None, value, threshold, message, REMEDY)
