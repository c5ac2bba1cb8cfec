"""The detector protocol and small helpers shared by the detector modules."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from .batch import BoolArray
from .context import BatchView
from .finding import Finding


class Detector(Protocol):
    """A stateless rule over a batch: what it remembers of a run lives in the view's :class:`DetectorMemory`."""

    @property
    def name(self) -> str:
        """Identifier that findings carry (``grad_explosion``)."""
        ...

    def detect(self, view: BatchView) -> list[Finding]:
        """Findings for every record of ``view.batch`` (one per step, condition and layer). Runs under the
        Pipeline's ``np.errstate(all="ignore")``: NaN, Inf and overflows are data, not accidents."""
        ...


def hits(mask: BoolArray) -> list[tuple[int, int]]:
    """``(record, layer)`` index pairs where a ``(n, n_layers)`` mask holds, in record then layer order."""
    if not mask.any():  # the usual case, and much cheaper than nonzero
        return []
    rows, cols = np.nonzero(mask)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def ratio_where(usable: BoolArray, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where ``usable`` holds, 0.0 elsewhere (no division warnings there)."""
    return np.where(usable, numerator / np.where(usable, denominator, 1.0), 0.0)


def forecast_or_none(steps: float) -> float | None:
    """A forecast for a finding: None when nothing is forecast."""
    return steps if math.isfinite(steps) else None


def fmt(value: float) -> str:
    """A number for a message: 3 significant digits."""
    return f"{value:.3g}"
