"""Per-layer gradients and updates: gradients that vanish, updates as large as the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt, hits, ratio_where
from .context import BatchView
from .finding import Finding, Severity

VANISHING_REMEDY = (
    "the layers before `{name}` barely learn: use ReLU-family activations instead of sigmoid/tanh in hidden "
    "layers, add BatchNormalization or residual connections, and use He initialization"
)
UPDATE_REMEDY = "lower the learning rate (e.g. ÷10), clip gradients with `clipnorm=1.0`, or add a learning-rate warm-up"


@dataclass(frozen=True)
class VanishingGradient:
    """Warning when a layer with weights gets mean |gradient| under ``threshold`` while another layer
    gets at least ``spread`` times that: uniformly tiny gradients mean a converged loss, not vanishing."""

    name: ClassVar[str] = "vanishing_gradient"
    threshold: float = 1e-7
    spread: float = 100.0

    def detect(self, view: BatchView) -> list[Finding]:
        """A finding per record and layer whose gradients vanish."""
        mean_abs, present = view.batch.layer("grad_mean_abs")
        watched = view.run.has_weights & ~view.run.sparse_grads
        usable = np.isfinite(mean_abs) & watched & present[:, None] & ~view.batch.skipped[:, None]
        values = np.where(usable, mean_abs, np.nan)
        largest = np.max(np.where(usable, mean_abs, 0.0), axis=1, initial=0.0)
        vanishing = (values < self.threshold) & (largest >= self.spread * self.threshold)[:, None]
        return [
            self._finding(view, i, layer, float(values[i, layer]), float(largest[i])) for i, layer in hits(vanishing)
        ]

    def _finding(self, view: BatchView, i: int, layer: int, value: float, largest: float) -> Finding:
        name = view.run.names[layer]
        message = (
            f"mean |gradient| of '{name}' is {fmt(value)} (threshold {fmt(self.threshold)}) while the largest "
            f"layer gets {fmt(largest)}"
        )
        step = int(view.batch.steps[i])
        return Finding(
            self.name, Severity.WARNING, step, name, value, self.threshold, message, VANISHING_REMEDY.format(name=name)
        )


@dataclass(frozen=True)
class UpdateRatio:
    """Warning when a step's update ‖Δw‖ exceeds ``threshold`` times the weights it started from.

    ``weight_norm`` is reported after the update, so the weights an update started from are the previous
    record's; with no previous record the current norm stands in (which understates the ratio).
    """

    name: ClassVar[str] = "update_ratio"
    threshold: float = 1.0

    def detect(self, view: BatchView) -> list[Finding]:
        """A finding per record and layer whose update is larger than its weights."""
        update, present = view.batch.layer("update_norm")
        current, _ = view.batch.layer("weight_norm")
        before = view.previous_weight_norm()
        before = np.where(np.isfinite(before) & (before > 0), before, current)
        usable = view.run.has_weights & present[:, None] & ~view.batch.skipped[:, None]
        usable &= np.isfinite(update) & np.isfinite(before) & (before > 0)
        ratio = ratio_where(usable, update, before)
        return [
            self._finding(view, i, layer, float(ratio[i, layer]), float(update[i, layer]), float(before[i, layer]))
            for i, layer in hits(ratio > self.threshold)
        ]

    def _finding(self, view: BatchView, i: int, layer: int, ratio: float, update: float, before: float) -> Finding:
        name = view.run.names[layer]
        message = (
            f"the update of '{name}' is {fmt(ratio)}× its weights (‖Δw‖ {fmt(update)} vs ‖w‖ {fmt(before)}; "
            f"threshold {fmt(self.threshold)})"
        )
        step = int(view.batch.steps[i])
        return Finding(self.name, Severity.WARNING, step, name, ratio, self.threshold, message, UPDATE_REMEDY)
