"""What a detector reports: one finding per condition, step and layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Final


class Severity(str, Enum):
    """How bad a finding is, in rising order. A string enum, as those of ``nanwatch.vocabulary`` (a member
    is its word on the wire and in the store), spelled out here: detectors import only the standard library
    and numpy."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


SEVERITY_RANK: Final[dict[str, int]] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
"""A severity's rank, the larger the worse (a plain string finds its member's rank too)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A precursor seen at one step: what, where, against which threshold, and the fix in plain words.

    ``value`` and ``threshold`` are in the detector's own unit (a robust z, a gain, a fraction, a number
    of steps); ``steps_to_nonfinite`` is the forecast where the detector makes one.
    """

    detector: str
    severity: Severity
    step: int
    layer: str | None
    value: float
    threshold: float
    message: str
    remedy: str
    steps_to_nonfinite: float | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        """The episode key: one condition per detector and layer."""
        return (self.detector, self.layer)

    @property
    def excess(self) -> float:
        """How far past its threshold the value is, as a factor ≥ 1 (larger is worse)."""
        value, threshold = abs(self.value), abs(self.threshold)
        if math.isnan(value) or value == threshold:
            return 1.0
        if threshold == 0.0 or value == 0.0:
            return math.inf
        return max(value / threshold, threshold / value)
