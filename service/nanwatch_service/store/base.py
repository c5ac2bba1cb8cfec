"""The Store protocol: what the service needs from a database, and nothing more.

Every table is keyed by ``run_id`` first so that the history can be sharded by run unchanged. Writes
happen inside ``with store.transaction():`` — one transaction per ingest request, committed before the
reply leaves, so whatever the service acknowledged survives a SIGKILL.

Step records and event details are stored as msgpack blobs: SQLite turns a NaN in a REAL column into
NULL, and a blob keeps every float bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from nanwatch.protocol import LAYER_FIELDS, SCALAR_FIELDS

RUN_STATUSES = ("running", "halted", "finished", "stale")
HEALTHS = ("ok", "warning", "critical")
SERIES_FIELDS = (*SCALAR_FIELDS, "skipped", *(f"layers.{field}" for field in LAYER_FIELDS))
"""What :meth:`Store.read_series` reads: a record's scalars, and its per-layer statistics as ``layers.<name>``."""

Steps = npt.NDArray[np.int64]
Column = tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]
"""``(values, present)`` of one series field, as the detectors' ``Batch`` reads a field."""


class StoreError(RuntimeError):
    """The database failed or is unreachable."""


class Store(Protocol):
    """Persistence for runs, step history, events and commands."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes; commit on success, roll back on an exception."""

    def ping(self) -> None:
        """Raise StoreError when the database cannot answer."""

    def close(self) -> None:
        """Release connections."""

    # runs
    def upsert_run(self, run_id: str, spec: dict[str, Any], now: float) -> bool:
        """Register or update a run's spec; True when it was new."""

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run row (spec decoded), or None."""

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set run columns: last_seen, last_step, status, health, steps_to_nonfinite, halt, counters."""

    def count_records(self, run_id: str, *, stored: int, dropped: int) -> None:
        """Add ``stored`` records to the run's count; raise its client drop count to ``dropped``."""

    def list_runs(
        self, *, status: str | None, team: str | None, stale_before: float, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Runs, newest first; ``stale_before`` is the last_seen cut-off that makes a running run stale."""

    # steps
    def insert_steps(self, run_id: str, attempt: str, records: Sequence[dict[str, Any]], now: float) -> None:
        """Append records; a re-sent step is a new row, distinguishable by ``attempt`` and ``seq``."""

    def read_steps(
        self, run_id: str, *, start: int | None, end: int | None, attempt: str | None, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        """Rows ``{seq, attempt, received_at, record}`` ordered by seq."""

    def recent_records(self, run_id: str, n: int) -> list[dict[str, Any]]:
        """The run's last ``n`` records in arrival order (to rebuild detector state)."""

    def read_series(
        self, run_id: str, fields: Sequence[str], *, start: int | None, end: int | None, attempt: str | None = None
    ) -> tuple[Steps, dict[str, Column]]:
        """The run's history as columns: ``(steps, {field: (values, present)})``, one row per record.

        Rows are the records with ``start <= step <= end`` (either bound ``None``: open), of one
        ``attempt`` or of all, in arrival order; a resumed job's re-sent steps are rows of their own, so
        ``steps`` (int64, shape ``(n,)``) need not be increasing. ``fields`` are names from
        :data:`SERIES_FIELDS`. Each field's ``values`` are float64: shape ``(n,)`` for a scalar
        (``skipped`` reads 1.0/0.0), shape ``(n, n_layers)`` for ``layers.<name>``, where ``n_layers`` is
        the length of the run's registered layer table; NaN and ±Inf that were sent are kept bit for bit.
        ``present`` (bool, shape ``(n,)``) says which records hold the field; where one does not (a light
        step without ``act_max_abs``, an array of another length) its values read NaN, which ``present``
        tells apart from a NaN that was sent. An unknown run reads as empty (``n == 0``); an unknown
        field raises ValueError.
        """

    # events
    def insert_event(self, run_id: str, event: dict[str, Any]) -> int:
        """Store a new event; return its id."""

    def update_event(self, run_id: str, event_id: int, event: dict[str, Any]) -> None:
        """Replace an event's fields."""

    def list_events(
        self,
        run_id: str,
        *,
        state: str | None = None,
        severity: str | None = None,
        detector: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Events ordered by id."""

    # commands
    def insert_command(self, run_id: str, command: dict[str, Any]) -> None:
        """Queue a command for the run's next ingest reply."""

    def active_halt(self, run_id: str) -> dict[str, Any] | None:
        """The latest halt command, acknowledged or not, or None."""

    def deliverable_commands(self, run_id: str, now: float, redelivery_s: float) -> list[dict[str, Any]]:
        """Unacknowledged commands never delivered, or delivered over ``redelivery_s`` ago; marks them."""

    def ack_command(self, run_id: str, command_id: str, step: int, now: float) -> dict[str, Any] | None:
        """Record the step a command was applied at; the command, or None if unknown."""


def rows_to_dicts(columns: Sequence[str], rows: Iterator[Sequence[Any]] | list[Any]) -> list[dict[str, Any]]:
    """Zip DB-API rows with their column names."""
    return [dict(zip(columns, row, strict=True)) for row in rows]
