"""Which step records a run keeps as it grows old: the rules, free of SQL.

A run's newest ``keep_steps`` records stay as they came, one chunk per ingest request. Older chunks are
compacted: consecutive chunks of one attempt are read together (at most ``GROUP_BYTES`` at a time) and
rewritten as a few chunks holding only

- the first record of every ``every`` steps (``step // every``), so the old history is still there at a
  coarser step, and
- every record within ``around`` steps of an event's steps (where it started, reached each severity, was
  last seen and ended), so an event can still be read with its neighbourhood in full.

The rule depends on steps only, so applying it again to compacted chunks keeps them as they are; the newest
compacted chunk is therefore taken again with the next chunks to compact, and compacted history fills
chunks of up to ``MAX_RECORDS`` records instead of leaving one small chunk per pass. A compacted chunk takes
the id of the first chunk its first record came from, so arrival order (``seq``) is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from nanwatch import protocol
from nanwatch.columns import StepColumns
from nanwatch_service.store.chunks import StoredChunk
from nanwatch_service.store.rows import EventRow

GROUP_BYTES: Final = 32 << 20
"""Most stored bytes compacted at once (what one group holds in memory)."""
MAX_RECORDS: Final = protocol.MAX_RECORDS
"""Most records in one compacted chunk (what a chunk may hold)."""


@dataclass(frozen=True)
class Retention:
    """The rules: newest ``keep_steps`` records in full, older ones one per ``every`` steps, plus every
    record within ``around`` steps of ``event_steps``."""

    keep_steps: int
    every: int
    around: int
    event_steps: tuple[int, ...] = ()

    def keep(self, columns: StepColumns) -> npt.NDArray[np.bool_]:
        """Which of an attempt's old records (in arrival order) stay."""
        keep = np.zeros(columns.n, dtype=bool)
        _, first = np.unique(columns.steps // self.every, return_index=True)
        keep[first] = True
        return keep | near(columns.steps, self.event_steps, self.around)


def near(steps: npt.NDArray[np.int64], points: Sequence[int], around: int) -> npt.NDArray[np.bool_]:
    """Which ``steps`` lie within ``around`` of one of ``points``."""
    if not len(points) or not len(steps):
        return np.zeros(len(steps), dtype=bool)
    marks = np.unique(np.asarray(points, dtype=np.int64))
    right = np.clip(np.searchsorted(marks, steps), 0, len(marks) - 1)
    left = np.clip(right - 1, 0, len(marks) - 1)
    gap = np.minimum(np.abs(marks[right] - steps), np.abs(steps - marks[left]))
    close: npt.NDArray[np.bool_] = gap <= around
    return close


def event_steps(events: Iterable[EventRow]) -> tuple[int, ...]:
    """The steps of events whose neighbourhoods are kept."""
    steps: set[int] = set()
    for event in events:
        candidates = [event.get(key) for key in ("first_step", "step", "last_step", "end_step")]
        candidates += list((event.get("severity_steps") or {}).values())
        steps.update(int(step) for step in candidates if isinstance(step, int))
    return tuple(sorted(steps))


@dataclass(frozen=True)
class ChunkInfo:
    """A stored chunk's row without its blobs."""

    id: int
    attempt: str
    n: int
    bytes: int
    compacted: bool


def groups(chunks: Sequence[ChunkInfo], keep_steps: int) -> list[list[ChunkInfo]]:
    """The groups to compact, oldest first, from a run's uncompacted chunks and its newest compacted one
    (``chunks`` in id order): everything but the newest ``keep_steps`` records, cut where the attempt
    changes or a group would pass ``GROUP_BYTES``; a lone compacted chunk is left alone."""
    held, boundary = 0, len(chunks)
    while boundary > 0 and held < keep_steps:
        boundary -= 1
        held += chunks[boundary].n
    found: list[list[ChunkInfo]] = []
    size = 0
    for chunk in chunks[:boundary]:
        if found and found[-1][0].attempt == chunk.attempt and size + chunk.bytes <= GROUP_BYTES:
            found[-1].append(chunk)
            size += chunk.bytes
        else:
            found.append([chunk])
            size = chunk.bytes
    return [group for group in found if not (len(group) == 1 and group[0].compacted)]


def compact(stored: Sequence[StoredChunk], retention: Retention) -> list[tuple[int, StepColumns]]:
    """The chunks a group becomes: ``(id, columns)`` pieces of at most ``MAX_RECORDS`` kept records, each
    with the id of the chunk its first record came from (chunks of another layer width start a piece)."""
    pieces: list[tuple[int, StepColumns]] = []
    start = 0
    for end in range(1, len(stored) + 1):
        if end == len(stored) or stored[end].columns.n_layers != stored[start].columns.n_layers:
            pieces += _compact_same_width(stored[start:end], retention)
            start = end
    return pieces


def _compact_same_width(stored: Sequence[StoredChunk], retention: Retention) -> list[tuple[int, StepColumns]]:
    columns = StepColumns.concat([chunk.columns for chunk in stored], n_layers=stored[0].columns.n_layers)
    origin = np.repeat([chunk.id for chunk in stored], [chunk.columns.n for chunk in stored])
    kept = np.flatnonzero(retention.keep(columns))
    return [(int(origin[kept[i]]), columns.take(kept[i : i + MAX_RECORDS])) for i in range(0, len(kept), MAX_RECORDS)]
