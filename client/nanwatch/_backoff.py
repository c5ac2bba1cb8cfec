"""Exponential backoff with jitter, for the sender's retries and the command channel's reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """0.5 s, 1 s, 2 s, ... up to ``cap``, each scaled by a random 0.5-1 so that many jobs that lost the
    service together do not come back in step."""

    start: float = 0.5
    cap: float = 10.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next try; counts a failure."""
        delay = min(self.cap, self.start * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """A try succeeded."""
        self.failures = 0
