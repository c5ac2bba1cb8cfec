"""The Store protocol: what the service needs from a database, and nothing more.

Every table is keyed by ``run_id`` first so that the history can be sharded by run unchanged. Ingest writes
arrive as :class:`IngestWrite` values, many at a time (group commit): :meth:`Store.write_ingest` persists
them inside one ``with store.transaction():``, committed before any of their replies leaves, so whatever
the service acknowledged survives a SIGKILL.

The rows it gives back are typed in ``store.rows``. Step history is stored in chunks of packed columns (see
``store.chunks``); event details and run specs are msgpack blobs: SQLite turns a NaN in a REAL column into
NULL, and a blob keeps every float bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from nanwatch.columns import SCALAR_COLUMNS, StepColumns
from nanwatch.fields import LAYER_FIELDS
from nanwatch_service.store.chunks import StoredChunk
from nanwatch_service.store.retention import Retention
from nanwatch_service.store.rows import CommandRow, EventRow, RunCommandRow, RunHalt, RunRow, StepRow

SERIES_FIELDS = (*SCALAR_COLUMNS, *(f"layers.{field}" for field in LAYER_FIELDS))
"""What :meth:`Store.read_series` reads: a record's scalars, and its per-layer statistics as ``layers.<name>``."""

Steps = npt.NDArray[np.int64]
Column = tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]
"""``(values, present)`` of one series field, as ``StepColumns`` and the detectors' ``Batch`` read one."""


BIGGEST: Final = 2**62
"""Query parameters are clamped to ±this: a huge integer from a URL must not overflow the database."""


def clamp(value: int) -> int:
    """``value`` within ±``BIGGEST``."""
    return max(-BIGGEST, min(BIGGEST, value))


class StoreError(RuntimeError):
    """The database failed or is unreachable."""


@dataclass(frozen=True)
class RunProgress:
    """What one ingest request changes on its run's row. ``status`` None leaves the status as it is (a
    request changes it only when the job finishes or acknowledges a halt)."""

    last_seen: float
    last_step: int | None
    health: str
    steps_to_nonfinite: float
    stored: int
    dropped: int
    attempt: str
    status: str | None = None
    halt: RunHalt | None = None
    clear_halt: bool = False
    """The job recovered from the run's halt and carries on: its halt is cleared (``halt`` is ignored)."""


@dataclass
class IngestWrite:
    """Everything one ingest request persists, decided before it is written.

    Events are the engine's live dicts paired with a snapshot of their fields taken when the request was
    processed: :meth:`Store.write_ingest` writes the snapshot and sets the live dict's ``id`` when it
    inserts one, so a later request's update of the same event (written after it) finds the id.
    """

    run_id: str
    attempt: str
    received_at: float
    columns: StepColumns
    progress: RunProgress | None = None
    new_events: list[tuple[EventRow, EventRow]] = field(default_factory=list)
    changed_events: list[tuple[EventRow, EventRow]] = field(default_factory=list)
    new_commands: list[CommandRow] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    acks: list[tuple[str, int]] = field(default_factory=list)


class Store(Protocol):
    """Persistence for runs, step history, events and commands."""

    shared: bool
    """Whether several replicas may share this store (PostgreSQL), so that another replica's commands
    reach this one only through the database."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes; commit on success, roll back on an exception."""

    def ping(self) -> None:
        """Raise StoreError when the database cannot answer."""

    def close(self) -> None:
        """Release connections."""

    # runs
    def upsert_run(self, run_id: str, spec: dict[str, Any], now: float) -> bool:
        """Register or update a run's spec; True when it was new."""

    def get_run(self, run_id: str) -> RunRow | None:
        """The run row (spec decoded), or None."""

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set run columns: last_seen, last_step, status, health, steps_to_nonfinite, halt, counters."""

    def list_runs(
        self, *, status: str | None, team: str | None, stale_before: float, limit: int, offset: int
    ) -> list[RunRow]:
        """Runs, newest first; ``stale_before`` is the last_seen cut-off that makes a running run stale."""

    def count_runs(self, team: str | None) -> int:
        """How many runs ``team`` holds (None: the runs registered without a team)."""

    def delete_run(self, run_id: str) -> bool:
        """Delete the run with its history, events and commands, in one transaction; False when there was
        no such run."""

    def runs_seen_before(self, cutoff: float, limit: int) -> list[str]:
        """Up to ``limit`` run ids last seen before ``cutoff``, the oldest first (what retention deletes)."""

    # ingest
    def write_ingest(self, writes: Sequence[IngestWrite]) -> None:
        """Persist ``writes`` in order, inside the caller's transaction: one chunk per write with records,
        one row update per write (counters added in SQL, so concurrent replicas never lose an increment;
        the drop count only rises), its events, its new commands, deliveries and acknowledgements."""

    # steps
    def read_steps(
        self,
        run_id: str,
        *,
        start: int | None,
        end: int | None,
        attempt: str | None,
        after_seq: int,
        limit: int,
        fields: Sequence[str] | None = None,
    ) -> list[StepRow]:
        """Rows ``{seq, attempt, received_at, record}`` ordered by seq; ``fields`` keeps only those record
        fields (``step`` always; ``layers`` for every per-layer statistic)."""

    def recent_chunks(self, run_id: str, n: int) -> list[StoredChunk]:
        """The chunks that hold the run's last ``n`` records, oldest first."""

    def runs_to_compact(self, threshold: int) -> list[str]:
        """The runs holding more than ``threshold`` records in chunks not compacted yet."""

    def compact_history(self, run_id: str, rules: Retention) -> int:
        """Rewrite the run's chunks older than its newest ``rules.keep_steps`` records as ``rules`` says
        (see ``store.retention``), a group at a time; return how many chunk rows the run holds fewer."""

    def read_series(
        self,
        run_id: str,
        fields: Sequence[str],
        *,
        start: int | None,
        end: int | None,
        attempt: str | None = None,
        n_layers: int | None = None,
    ) -> tuple[Steps, dict[str, Column]]:
        """The run's history as columns: ``(steps, {field: (values, present)})``, one row per record.

        Rows are the records with ``start <= step <= end`` (either bound ``None``: open), of one
        ``attempt`` or of all, in arrival order; a resumed job's re-sent steps are rows of their own, so
        ``steps`` (int64, shape ``(n,)``) need not be increasing. ``fields`` are names from
        :data:`SERIES_FIELDS`. Each field's ``values`` are float64: shape ``(n,)`` for a scalar
        (``skipped`` reads 1.0/0.0), shape ``(n, n_layers)`` for ``layers.<name>`` (``n_layers``: the
        run's layer table's length when given, else the width of its latest stored chunk; a chunk of
        another width, from before the run registered a new table, reads its statistics absent); NaN and
        ±Inf that were sent are kept bit for bit. ``present`` (bool, shape ``(n,)``) says which records
        hold the field; where one does not (a light step without ``act_max_abs``) its values read NaN,
        which ``present`` tells apart from a NaN that was sent. A field no record holds reads all absent;
        an unknown run (or one without records) reads as empty, ``n == 0`` and no layers. Per-layer blobs
        are read only when a per-layer field is asked for.
        """

    # events
    def insert_event(self, run_id: str, event: EventRow) -> int:
        """Store a new event; return its id."""

    def update_event(self, run_id: str, event_id: int, event: EventRow) -> None:
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
    ) -> list[EventRow]:
        """Events ordered by id."""

    # commands
    def insert_command(self, run_id: str, command: CommandRow) -> None:
        """Queue a command for the run."""

    def active_halt(self, run_id: str) -> CommandRow | None:
        """The latest halt command, acknowledged or not, or None."""

    def pending_commands(self, run_id: str) -> list[CommandRow]:
        """The run's commands not yet acknowledged, oldest first."""

    def get_command(self, run_id: str, command_id: str) -> CommandRow | None:
        """One command of the run, or None."""

    def pending_halts(self, run_ids: Sequence[str]) -> dict[str, CommandRow]:
        """The latest unacknowledged halt of each of ``run_ids`` that has one, by run id."""

    def listen_commands(self, heard: Callable[[str, str], None]) -> Callable[[], None]:
        """Call ``heard(run_id, command_id)``, from a thread of the store's, whenever any replica commits
        a new command; return the function that stops listening. A store shared by no other replica
        (SQLite) hears nothing: this replica knows its own commands."""

    def unacked_commands(self) -> list[RunCommandRow]:
        """Every command not yet acknowledged, with its ``run_id`` (how a replica learns of the halts
        another replica issued)."""


def rows_to_dicts(columns: Sequence[str], rows: Iterator[Sequence[Any]] | list[Any]) -> list[dict[str, Any]]:
    """Zip DB-API rows with their column names."""
    return [dict(zip(columns, row, strict=True)) for row in rows]
