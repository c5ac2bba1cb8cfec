"""amplification: a layer whose output is orders of magnitude larger than its input.

The gain ``act_max_abs / in_max_abs`` of a layer that divides by a tiny variance or norm (an epsilon too
small for the data, as in ``x / (var + 1e-7)`` on a constant row) reaches 1e7 while everything stays
finite; the next step may not. Normalization legitimately amplifies small inputs to order one, so the
output must also be large (``min_output``) for the gain to count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt, hits, ratio_where
from .context import BatchView
from .finding import Finding, Severity

DIVISION_REMEDY = (
    "`{name}` divides by something close to 0 (a variance, norm or count): use an epsilon that matches the "
    "data's scale (e.g. `var + 1e-3` rather than 1e-7), or normalize with LayerNormalization/BatchNormalization"
)
WEIGHTS_REMEDY = (
    "the weights of `{name}` have grown huge: lower the learning rate, clip gradients with `clipnorm=1.0`, and "
    "add BatchNormalization or weight decay"
)


@dataclass(frozen=True)
class Amplification:
    """Warning when a layer's gain exceeds ``gain`` and its output exceeds ``min_output``."""

    name: ClassVar[str] = "amplification"
    gain: float = 1e4
    min_output: float = 100.0

    def detect(self, view: BatchView) -> list[Finding]:
        """A finding per record and layer whose output/input magnitude ratio is too large."""
        out, _ = view.batch.layer("act_max_abs")
        large = np.isfinite(out) & (out >= self.min_output)
        if not large.any():
            return []  # in_max_abs need not even be read
        inp, _ = view.batch.layer("in_max_abs")
        usable = np.isfinite(out) & np.isfinite(inp) & (inp > 0) & (out >= self.min_output)
        gain = ratio_where(usable, out, inp)
        return [
            self._finding(view, i, layer, float(gain[i, layer]), float(out[i, layer]), float(inp[i, layer]))
            for i, layer in hits(gain > self.gain)
        ]

    def _finding(self, view: BatchView, i: int, layer: int, gain: float, out: float, inp: float) -> Finding:
        name = view.run.names[layer]
        message = (
            f"'{name}' turns inputs of at most {fmt(inp)} into outputs up to {fmt(out)}: gain {fmt(gain)} "
            f"(threshold {fmt(self.gain)})"
        )
        step = int(view.batch.steps[i])
        remedy = (DIVISION_REMEDY if view.run.is_custom(layer) else WEIGHTS_REMEDY).format(name=name)
        return Finding(self.name, Severity.WARNING, step, name, gain, self.gain, message, remedy)
