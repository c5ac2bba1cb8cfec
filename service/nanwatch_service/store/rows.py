"""What the store holds and gives back, row by row: a run, a step record, an event, a command, a run's halt.

These are plain dicts (what the REST replies are made of), typed: the keys each row has and what they hold.
A status, health, severity or state holds a word of ``nanwatch.vocabulary`` (or ``detectors.Severity``),
as a member when the service wrote it and as the plain string, equal to it, when the store read it back.
"""

from __future__ import annotations

from typing import Any, TypedDict


class HaltFields(TypedDict):
    """What a halt command and a run's halt both say: why, from where, who sent it, where to stop, and how
    far it got."""

    reason: str
    source: str
    step: int | None
    at_step: int
    created_at: float
    delivered_at: float | None
    acked_step: int | None
    acked_at: float | None
    sent_by: str | None


class RunHalt(HaltFields):
    """A run's halt as the run row keeps it: the command, who sent it, and where the job stopped."""

    command_id: str
    state: str
    """A :class:`~nanwatch.vocabulary.HaltState`: pending until the job acknowledged it."""


class RunRow(TypedDict):
    """A registered run: its registration (``spec``, decoded) and where it stands."""

    run_id: str
    spec: dict[str, Any]
    """The registration as ``protocol.decode_run`` returns it, with the owning ``team``."""
    team: str | None
    created_at: float
    updated_at: float
    last_seen: float
    last_step: int | None
    status: str
    """A stored :class:`~nanwatch.vocabulary.RunStatus` (never ``stale``: that is read from ``last_seen``)."""
    health: str
    """A :class:`~nanwatch.vocabulary.Health`."""
    steps_to_nonfinite: float | None
    halt: RunHalt | None
    """The halt the job acknowledged, or None."""
    records: int
    dropped: int
    last_attempt: str | None


class StepRow(TypedDict):
    """One stored step record and where it stands in the run's arrival order."""

    seq: int
    attempt: str
    received_at: float
    record: dict[str, Any]
    """The record as protocol 1 spells it (``step``, scalars, ``layers``), of the fields asked for."""


class _EventFields(TypedDict):
    detector: str
    severity: str
    """A :class:`~nanwatch_service.detectors.Severity`."""
    layer: str | None
    state: str
    """An :class:`~nanwatch.vocabulary.EventState`."""
    step: int
    first_step: int
    last_step: int
    end_step: int | None
    message: str
    remedy: str


class EventRow(_EventFields, total=False):
    """An event: one episode of a detector's condition on a layer (or the run), or a report the job or
    Alertmanager sent. ``id`` is set once it is stored; the others that may be missing belong to one kind."""

    id: int
    value: float | None
    threshold: float | None
    steps_to_nonfinite: float | None
    severity_steps: dict[str, int]
    """A detector's episode: the step at which it first reached each severity."""
    details: dict[str, Any]
    """A job's report: what it did (a recovery), and the ``command_id`` it answered."""
    alert: dict[str, Any]
    """An Alertmanager notification, as received."""


class CommandRow(HaltFields):
    """A command for a run's job (a halt): what, why, who, where to stop, and how far it got."""

    id: str
    action: str


class RunCommandRow(CommandRow):
    """A command with the run it is for (what a replica reads of the commands another replica issued)."""

    run_id: str
