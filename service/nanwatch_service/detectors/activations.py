"""Shape of a layer's activations: zero-variance rows or collapse, and dead ReLUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import fmt, hits
from .context import BatchView
from .finding import Finding, Severity

ZERO_ROWS_REMEDY = (
    "a division by the variance or std of these rows gives inf/NaN: add an epsilon to the denominator "
    "(`var + 1e-7`) of any normalization after `{name}`, or use LayerNormalization (which has one); check the "
    "data for constant rows"
)
COLLAPSED_REMEDY = (
    "`{name}` now outputs one constant: lower the learning rate, add an epsilon to any denominator inside it, "
    "and check for a saturated activation or a weight driven to 0"
)
DEAD_RELU_REMEDY = (
    "lower the learning rate, use He initialization, or switch `{name}` to LeakyReLU/ELU so units can recover"
)


@dataclass(frozen=True)
class ZeroVariance:
    """Warning when some samples leave a layer as constant rows while others vary (``act_frac_zero_var``
    above ``fraction`` and below 1), or when a layer that varied earlier outputs a single constant."""

    name: ClassVar[str] = "zero_variance"
    fraction: float = 0.0

    def detect(self, view: BatchView) -> list[Finding]:
        """Findings per record and layer with zero-variance rows or a collapsed output."""
        watched = ~view.run.relu_like  # all-zero rows after a ReLU are dead_relu's business
        if not watched.any():
            return []
        zero_rows, _ = view.batch.layer("act_frac_zero_var")
        std, _ = view.batch.layer("act_std")
        partial = (zero_rows > self.fraction) & (zero_rows < 1.0) & watched
        collapsed = (std == 0.0) & view.varied_before() & watched & ~partial
        findings = [self._rows(view, i, layer, float(zero_rows[i, layer])) for i, layer in hits(partial)]
        findings += [self._collapsed(view, i, layer) for i, layer in hits(collapsed)]
        return findings

    def _rows(self, view: BatchView, i: int, layer: int, value: float) -> Finding:
        name = view.run.names[layer]
        message = (
            f"{value:.1%} of the samples leave '{name}' as constant rows (zero variance across features) while "
            f"the others vary (threshold > {fmt(self.fraction)})"
        )
        step = int(view.batch.steps[i])
        return Finding(
            self.name, Severity.WARNING, step, name, value, self.fraction, message, ZERO_ROWS_REMEDY.format(name=name)
        )

    def _collapsed(self, view: BatchView, i: int, layer: int) -> Finding:
        name = view.run.names[layer]
        message = f"'{name}' outputs one constant for the whole batch (std 0) though it varied at earlier steps"
        step = int(view.batch.steps[i])
        return Finding(self.name, Severity.WARNING, step, name, 0.0, 0.0, message, COLLAPSED_REMEDY.format(name=name))


@dataclass(frozen=True)
class DeadRelu:
    """Info when more than ``fraction`` of a ReLU layer's outputs are exactly 0.

    A freshly initialized ReLU layer already outputs about 50 % zeros, so the default sits well above that.
    """

    name: ClassVar[str] = "dead_relu"
    fraction: float = 0.9

    def detect(self, view: BatchView) -> list[Finding]:
        """An info finding per record and ReLU layer that is mostly zeros."""
        relu = view.run.relu
        if not relu.any():
            return []
        zeros, _ = view.batch.layer("act_frac_zero")
        dead = (zeros > self.fraction) & relu
        return [self._finding(view, i, layer, float(zeros[i, layer])) for i, layer in hits(dead)]

    def _finding(self, view: BatchView, i: int, layer: int, value: float) -> Finding:
        name = view.run.names[layer]
        message = f"{value:.1%} of the outputs of '{name}' are exactly 0 (threshold {self.fraction:.0%})"
        step = int(view.batch.steps[i])
        return Finding(
            self.name, Severity.INFO, step, name, value, self.fraction, message, DEAD_RELU_REMEDY.format(name=name)
        )
