"""The Monitor's outbox: the bounded buffer between the training thread and the sender thread.

The training thread only appends (a record, or an acknowledgement) and reads a few counters; the sender
takes batches, puts back the ones that failed, and says what the service has answered. Everything here is
guarded by one condition, on which the sender waits for its next flush and ``Monitor.sync`` for an answer.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

MAX_ACKS: Final = 1000


class Later:
    """A record whose ``log_step`` keyword arguments ``build()`` makes on the sender thread."""

    __slots__ = ("build", "step", "wall_time")  # made on the training thread, every step: kept cheap

    def __init__(self, step: int, wall_time: float, build: Callable[[], Mapping[str, Any]]) -> None:
        self.step, self.wall_time, self.build = step, wall_time, build


Entry = dict[str, Any] | Later


@dataclass
class Batch:
    """What one ingest request carries."""

    records: list[dict[str, Any]]
    acks: list[dict[str, Any]]
    final: bool
    events: list[dict[str, Any]]


class Outbox:
    """Records waiting to be sent (at most ``buffer_size``: a full buffer drops its oldest and counts
    them), acknowledgements waiting to be sent, and what the sender has achieved so far."""

    def __init__(self, buffer_size: int, max_batch: int) -> None:
        self.buffer_size, self.max_batch = buffer_size, max_batch
        self.cond = threading.Condition()
        self.buffer: deque[Entry] = deque()
        self.acks: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # what the job reports itself (a recovery)
        self.dropped = 0
        self.in_flight = 0
        self.closing = False  # close() was called: nothing more is buffered, the sender drains and stops
        self.deadline = math.inf  # time.monotonic() by which close() gives up on the service
        self.urgent = False  # sync() asked for a send now
        self.retrying = False  # the last send failed: the sender keeps to its backoff
        self.away = False  # the service is unreachable (an outage is in progress)
        self.final_sent = False
        self.delivered_step = -1  # the highest step the service has answered for

    # ------------------------------------------------------------------ training thread
    def append(self, entry: Entry) -> None:
        """Buffer one record (dropping the oldest when full); wake the sender only when it would act."""
        with self.cond:
            if self.closing:
                return
            if len(self.buffer) >= self.buffer_size:
                self.buffer.popleft()
                self.dropped += 1
            self.buffer.append(entry)
            if len(self.buffer) >= self.max_batch and self.flush_due():
                # during an outage the buffer stays full, and waking the sender on every step (to find it
                # must keep waiting) cost the training thread ~25 µs a step
                self.cond.notify_all()

    def acknowledge(self, command_id: str, step: int) -> None:
        """Send an acknowledgement of a command with the next batch."""
        with self.cond:
            self.acks.append({"id": command_id, "step": step})

    def report(self, event: dict[str, Any]) -> None:
        """Send an event the job reports with the next batch (nothing once closing)."""
        with self.cond:
            if not self.closing:
                self.events.append(event)

    # ------------------------------------------------------------------ sender thread
    def flush_due(self) -> bool:
        """Whether the sender should send before its flush interval is up (call with the lock held)."""
        full = len(self.buffer) >= self.max_batch
        return self.closing or (not self.retrying and (full or self.urgent))

    def wait(self, delay: float) -> bool:
        """Wait until the next flush is due; False once the Monitor is closing."""
        with self.cond:
            self.cond.wait_for(self.flush_due, timeout=delay)
            return not self.closing

    def take(self, closing: bool) -> tuple[list[Entry], list[dict[str, Any]], bool, list[dict[str, Any]]] | None:
        """The next batch's entries, acknowledgements, ``final`` flag and events; None when there is nothing."""
        with self.cond:
            taken = [self.buffer.popleft() for _ in range(min(self.max_batch, len(self.buffer)))]
            acks, self.acks = self.acks[:MAX_ACKS], self.acks[MAX_ACKS:]
            events, self.events = self.events[:MAX_ACKS], self.events[MAX_ACKS:]
            final = closing and not self.buffer
            self.urgent = False
            if not (taken or acks or events or final):
                return None
            self.in_flight = len(taken)
            return taken, acks, final, events

    def delivered(self, batch: Batch) -> None:
        """The service stored ``batch``."""
        with self.cond:
            self.in_flight = 0
            self.final_sent = self.final_sent or batch.final
            self.delivered_step = max([self.delivered_step, *(r["step"] for r in batch.records)])
            self.cond.notify_all()

    def requeue(self, batch: Batch) -> None:
        """Put a failed batch back at the front, keeping the bound by dropping the oldest records."""
        with self.cond:
            self.in_flight = 0
            self.buffer.extendleft(reversed(batch.records))
            self.acks[:0] = batch.acks
            self.events[:0] = batch.events
            while len(self.buffer) > self.buffer_size:
                self.buffer.popleft()
                self.dropped += 1

    def reject(self, batch: Batch) -> None:
        """Drop a batch the service refused as malformed (counted), so that it is not retried forever."""
        with self.cond:
            self.in_flight = 0
            self.dropped += len(batch.records)

    def drop(self, records: int) -> None:
        """Count ``records`` that could not be made as dropped."""
        with self.cond:
            self.dropped += records

    def set_away(self, away: bool) -> None:
        """Mark an outage's start or end; a ``sync()`` in progress stops waiting when it starts."""
        with self.cond:
            self.away = away
            self.cond.notify_all()

    def close(self, deadline: float) -> bool:
        """Stop buffering; the sender drains until ``deadline``. False when it was closed already."""
        with self.cond:
            if self.closing:
                return False
            self.closing, self.deadline = True, deadline
            self.cond.notify_all()
            return True

    def left(self) -> int:
        """Records not delivered (buffered or in flight)."""
        with self.cond:
            return len(self.buffer) + self.in_flight
