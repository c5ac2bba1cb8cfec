"""When a strided callback takes its detail step: every k-th step, or as often as a time budget allows.

A detail step measures more than a light one (``_instrument``), and what that costs depends on the machine
far more than on the model: on a GPU the extra reductions are a few fused kernels, on a 2-vCPU machine a
detail step of a small CNN takes a quarter longer than a light one. ``activation_stride="auto"`` (the
callback's default) therefore times both kinds of step and spaces the detail steps so that their extra
time stays within ``BUDGET`` of the training time: ``k = ceil(extra / (BUDGET * light))``, never more
often than every ``LOWEST``-th step and at least every ``HIGHEST``-th. Until both kinds have been timed it
uses ``LOWEST``. A step is timed from the train function's call to the callback's read of its vector
(which waits for the device), the medians of the recent light and detail steps compared; the first call
of each train function (its trace) is not counted.

A fixed stride k keeps the detail steps on the multiples of k (global steps); "auto" also takes one at the
first step of each ``fit``.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Final

BUDGET: Final = 0.005
"""The share of the training time the detail steps may add under ``"auto"``: half a percent, so that with
the light steps' own cost (1-2 % of a small model's step on a 2-vCPU CPU, far less on a GPU) the callback
costs at most 3 % of the training time at defaults. Every step already carries what names a NaN/Inf; the details are
the slower-moving statistics (std, fractions, weight and update norms), for which every ~20th-50th step is
plenty. ``activation_stride=10`` buys them more often."""
LOWEST: Final = 10
HIGHEST: Final = 100
_LIGHT_WINDOW: Final = 64  # recent light steps whose median is compared
_DETAIL_WINDOW: Final = 8


class Schedule:
    """Which global steps take the detail step: a fixed ``stride``, or ``auto`` (see the module)."""

    def __init__(self, stride: int | str) -> None:
        self.auto = stride == "auto"
        self.stride = LOWEST if self.auto else int(stride)
        self.next_detail = 0
        self._light: deque[float] = deque(maxlen=_LIGHT_WINDOW)
        self._detail: deque[float] = deque(maxlen=_DETAIL_WINDOW)

    def start(self, step: int) -> None:
        """A ``fit`` starts at global ``step``: "auto" takes the details there, a fixed stride at its next
        multiple of the stride."""
        self.next_detail = step if self.auto else -(-step // self.stride) * self.stride

    def due(self, step: int) -> bool:
        return step >= self.next_detail

    def ran(self, step: int, detail: bool) -> None:
        """Global ``step`` ran, with or without the details."""
        if detail:
            self.next_detail = step + self.stride

    def timed(self, seconds: float, detail: bool) -> None:
        """A step (not a trace) took ``seconds``; under "auto" a detail step's time re-chooses the stride."""
        if not self.auto:
            return
        (self._detail if detail else self._light).append(seconds)
        if detail and len(self._light) >= _DETAIL_WINDOW:
            last = self.next_detail - self.stride  # the detail step just timed
            self.stride = choose(statistics.median(self._light), statistics.median(self._detail))
            self.next_detail = last + self.stride

    def __repr__(self) -> str:
        return f"Schedule(stride={self.stride}, auto={self.auto}, next_detail={self.next_detail})"


def choose(light: float, detail: float, budget: float = BUDGET) -> int:
    """The stride that keeps the detail steps' extra time (``detail - light`` each) within ``budget`` of the
    light steps' time, clamped to ``[LOWEST, HIGHEST]``."""
    extra = detail - light
    if not (light > 0 and extra > 0):
        return LOWEST
    return int(min(HIGHEST, max(LOWEST, math.ceil(extra / (budget * light)))))
