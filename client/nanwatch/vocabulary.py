"""The words the client and the service share: a run's status and health, a run's halt policy, an event's
state and a halt's state. (A finding's severity is the detectors' own word: ``nanwatch_service.detectors``'
:class:`~nanwatch_service.detectors.Severity`.)

Each is a string enum: a member *is* its word (``Health.OK == "ok"``, ``str(Health.OK) == "ok"``, the same
hash), so it goes on the wire, into a database column or a JSON reply as the plain string, and a plain
string read back compares equal to it. ``tests/test_vocabulary.py`` keeps these words from being spelled
out anywhere else in ``client/`` and ``service/``.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A string enum whose members print as their value: ``enum.StrEnum``, which Python 3.10 lacks."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class RunStatus(StrEnum):
    """Where a run stands. ``stale`` is never stored: a running run reads stale once it has been silent
    longer than ``NANWATCH_STALE_AFTER_S``."""

    RUNNING = "running"
    HALTED = "halted"
    FINISHED = "finished"
    STALE = "stale"


class Health(StrEnum):
    """A run's health: the worst severity among its open events, info ones not counted."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @classmethod
    def of_rank(cls, rank: int) -> Health:
        """The health that the worst open event's severity makes, by its rank (0 for info: ok)."""
        return (cls.OK, cls.WARNING, cls.CRITICAL)[rank]


class HaltPolicy(StrEnum):
    """The findings a run's policy halts it on: critical ones, warnings and worse, or none (``never`` also
    turns off the client's own halt on a non-finite loss or gradient)."""

    CRITICAL = "critical"
    WARNING = "warning"
    NEVER = "never"


class EventState(StrEnum):
    """An event is open while its episode lasts, closed once it ended (a client's report is born closed)."""

    OPEN = "open"
    CLOSED = "closed"


class HaltState(StrEnum):
    """A run's halt: pending until the job acknowledges it, then acknowledged."""

    PENDING = "pending"
    ACKNOWLEDGED = "acknowledged"
