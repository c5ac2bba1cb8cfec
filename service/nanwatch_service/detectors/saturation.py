"""saturation: sigmoid/tanh/softmax outputs pinned at their bounds; probabilities at or next to exactly 0 or 1.

A saturated unit passes almost no gradient. Worse, a probability that rounds to exactly 0 or 1 makes a
hand-written ``log(p)`` or ``log(1 - p)`` return -inf at once (and ``0 * log(0)`` NaN). The precursor is
the top sigmoid output's margin ``1 - p_max`` shrinking toward the dtype's resolution just below 1
(``eps`` = 2**-24 in float32, 2**-11 in float16): within ``warn_ulps`` × eps it is a warning, within
``critical_ulps`` × eps critical (the logit is then within ~2.3 of rounding p to exactly 1). A margin
over ``max_warn_margin``/``max_critical_margin`` (1e-3/1e-4) never counts: in half precision 100 ulps
reach down to p = 0.6, an ordinary prediction, so there only an exact 1 does. Keras' built-in
cross-entropies clip p (or take logits) and carry on: a run that registers ``stable_loss`` (the Keras
callback does for those losses) gets warnings only, since its saturation slows learning but cannot make
the loss non-finite.
Exact zeros of a probability layer, or most of a bounded layer within 1e-7 of its bounds, are warnings.

A confident softmax routinely puts its top probability at 1 - 1e-8, so only its exact zeros count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt, hits
from .context import BatchView
from .finding import Finding, Severity

REMEDY = (
    "compute the loss from logits with a numerically stable built-in loss (no sigmoid/softmax on `{name}` "
    "and e.g. `BinaryCrossentropy(from_logits=True)`), or clip probabilities (`tf.clip_by_value(p, 1e-7, "
    "1 - 1e-7)`) before any log; lower the learning rate"
)
SIGMOID_LIKE = frozenset({"sigmoid", "hard_sigmoid"})


@dataclass(frozen=True)
class Saturation:
    """Warning when more than ``fraction`` of a bounded layer's outputs sit within 1e-7 of its bounds, a
    probability layer outputs exact zeros, or a sigmoid output is within ``warn_ulps`` resolution steps of 1;
    critical within ``critical_ulps`` steps, or within ``warn_ulps`` on a mostly saturated layer (never when
    the run registered a ``stable_loss``)."""

    name: ClassVar[str] = "saturation"
    fraction: float = 0.5
    warn_ulps: float = 100.0
    critical_ulps: float = 10.0
    max_warn_margin: float = 1e-3
    max_critical_margin: float = 1e-4

    def detect(self, view: BatchView) -> list[Finding]:
        """A finding per record and bounded layer that is saturated."""
        run = view.run
        if not run.bounded.any():
            return []
        share, _ = view.batch.layer("act_frac_saturated")
        margin = self._margin(view)
        zeros, _ = view.batch.layer("act_frac_zero")
        warn_at, critical_at = self._margins(run.prob_eps)
        mostly = (share > self.fraction) & run.bounded
        near = margin <= warn_at
        critical = ((margin <= critical_at) | (mostly & near)) & (not run.stable_loss)
        # an exact 0 is also within 1e-7 of the bound: both fractions agree when the zeros are real
        exact_zeros = (zeros > 0) & (share > 0) & run.probability
        flagged = mostly | near | exact_zeros
        return [
            self._finding(view, i, layer, float(share[i, layer]), float(margin[i, layer]), bool(critical[i, layer]))
            for i, layer in hits(flagged)
        ]

    def _margins(self, eps: float) -> tuple[float, float]:
        """The warning and critical margins for a dtype whose resolution below 1 is ``eps``."""
        return min(self.warn_ulps * eps, self.max_warn_margin), min(self.critical_ulps * eps, self.max_critical_margin)

    def _margin(self, view: BatchView) -> np.ndarray:
        """``1 - p_max`` of sigmoid layers (NaN elsewhere)."""
        max_abs, _ = view.batch.layer("act_max_abs")
        return np.where(view.run.mask(SIGMOID_LIKE) & (max_abs <= 1.0), 1.0 - max_abs, np.nan)

    def _finding(self, view: BatchView, i: int, layer: int, share: float, margin: float, critical: bool) -> Finding:
        run, name = view.run, view.run.names[layer]
        severity = Severity.CRITICAL if critical else Severity.WARNING
        warn_at, critical_at = self._margins(run.prob_eps)
        message = (
            f"{share:.1%} of the outputs of '{name}' ({run.activations[layer]}) are within 1e-7 of their "
            f"bounds (threshold {self.fraction:.0%})"
        )
        value, threshold = share, self.fraction
        if margin <= warn_at:
            measured = "" if math.isnan(share) else f"; {message}"  # the fraction is a detail-step statistic
            message = (
                f"the top probability of '{name}' ({run.activations[layer]}) is {fmt(margin)} from 1 (warning ≤ "
                f"{fmt(warn_at)}, critical ≤ {fmt(critical_at)}): once it rounds to 1 a hand-written log(1 - p) "
                f"is -inf (a built-in loss clips p and carries on){measured}"
            )
            if run.stable_loss:
                message += "; this run's loss is a built-in cross-entropy, so it is a warning only"
            if math.isnan(share):
                value, threshold = margin, warn_at
        elif share <= self.fraction:
            message += "; some probabilities are exactly 0: a hand-written log(p) of them is -inf"
        step = int(view.batch.steps[i])
        return Finding(self.name, severity, step, name, value, threshold, message, REMEDY.format(name=name))
