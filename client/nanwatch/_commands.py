"""The Monitor's commands: what the service asked the job to do, each applied once, at its step.

Commands arrive from the replies to step batches and from the command channel, possibly both, possibly
repeated (the service delivers until acknowledged): each is kept by id, pending until a batch end reaches
its ``at_step`` (at once when it has none), then applied once and acknowledged in the next batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Halt:
    """Why and where a job must stop.

    ``source`` is ``"detector"``, ``"operator"`` or ``"alertmanager"`` for a command from the service
    (then ``command_id`` and ``at_step`` are the command's) and ``"client"`` for the local non-finite check.
    """

    reason: str
    step: int
    source: str
    command_id: str | None = None
    at_step: int | None = None


class Commands:
    """Commands received and not yet applied, and the ids of those applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._applied: set[str] = set()

    def offer(self, commands: Iterable[dict[str, Any]]) -> None:
        """Keep the commands not seen before (decoded by ``protocol.decode_command``)."""
        with self._lock:
            for command in commands:
                if command["id"] not in self._applied:
                    self._pending.setdefault(command["id"], command)

    def known(self) -> list[str]:
        """Ids of every command received (pending or applied): the command channel need not send them."""
        with self._lock:
            return [*self._pending, *self._applied]

    def due(self, step: int) -> tuple[Halt | None, list[str]]:
        """Apply the commands due at ``step``: the first one's Halt (None when none is due) and the ids of
        all of them, to acknowledge at ``step``."""
        with self._lock:
            if not self._pending:
                return None, []
            due = [c for c in self._pending.values() if c["at_step"] is None or c["at_step"] <= step]
            for command in due:
                del self._pending[command["id"]]
                self._applied.add(command["id"])
        if not due:
            return None, []
        first = due[0]
        return Halt(first["reason"], step, first["source"], first["id"], first["at_step"]), [c["id"] for c in due]
