"""EpisodeTracker: per-step findings folded into episodes that start, worsen and end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .finding import SEVERITY_RANK, Finding

Key = tuple[str, str | None]


@dataclass(frozen=True)
class EpisodeChange:
    """An episode of one (detector, layer) condition started, got worse, or ended.

    ``finding`` is the finding that started or worsened it, and for ``ended`` the last one seen; ``step`` is
    the step at which the change was decided (for ``ended``, the step after which it had been quiet for
    ``quiet_steps`` processed steps).
    """

    kind: Literal["started", "updated", "ended"]
    key: Key
    finding: Finding | None
    step: int


@dataclass
class _Episode:
    reported: Finding
    last: Finding
    quiet: int = 0


class EpisodeTracker:
    """Turns per-step findings into episodes: one 'started' when a (detector, layer) condition starts,
    'updated' while it lasts (only when its severity rises or its value's excess over the threshold at
    least doubles since the last report, so it doesn't flood), and one 'ended' after it has been quiet for
    ``quiet_steps`` processed steps."""

    def __init__(self, quiet_steps: int = 5) -> None:
        self.quiet_steps = quiet_steps
        self._open: dict[Key, _Episode] = {}

    def update(self, steps: Sequence[int], findings: Sequence[Finding]) -> list[EpisodeChange]:
        """Changes caused by the steps just processed (in order) and what ``process()`` found at them."""
        by_step: dict[int, list[Finding]] = {}
        for finding in findings:
            by_step.setdefault(finding.step, []).append(finding)
        changes: list[EpisodeChange] = []
        for step in steps:
            active = by_step.pop(step, [])
            for finding in active:
                changes.extend(self._see(finding))
            changes.extend(self._quiet(step, {finding.key for finding in active}))
        for step in sorted(by_step):  # findings at steps not listed (e.g. re-opened episodes): no quiet step
            for finding in by_step[step]:
                changes.extend(self._see(finding))
        return changes

    def open_keys(self) -> set[Key]:
        """Keys of the episodes not yet ended."""
        return set(self._open)

    def _see(self, finding: Finding) -> list[EpisodeChange]:
        episode = self._open.get(finding.key)
        if episode is None:
            self._open[finding.key] = _Episode(reported=finding, last=finding)
            return [EpisodeChange("started", finding.key, finding, finding.step)]
        episode.last, episode.quiet = finding, 0
        if not _worse(finding, episode.reported):
            return []
        episode.reported = finding
        return [EpisodeChange("updated", finding.key, finding, finding.step)]

    def _quiet(self, step: int, active: set[Key]) -> list[EpisodeChange]:
        ended: list[EpisodeChange] = []
        for key, episode in list(self._open.items()):
            if key in active:
                continue
            episode.quiet += 1
            if episode.quiet >= self.quiet_steps:
                del self._open[key]
                ended.append(EpisodeChange("ended", key, episode.last, step))
        return ended


def _worse(finding: Finding, reported: Finding) -> bool:
    rank, before = SEVERITY_RANK[finding.severity], SEVERITY_RANK[reported.severity]
    if rank != before:
        return rank > before
    return finding.excess >= 2.0 * reported.excess
