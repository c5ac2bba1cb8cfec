"""One SQL implementation of the Store protocol, shared by SQLite and PostgreSQL.

The two differ only in the connections, the placeholder style and the schema (how an id is generated);
every query is written once, with ``?`` placeholders, and rewritten for psycopg's ``%s``.

Writes go through one connection under one lock (one writer per replica; the group committer batches many
ingest requests into each of its transactions). Reads outside a transaction go through a second
connection, so that a history read never waits for a commit and never sees an uncommitted write; inside a
transaction, reads on the transaction's thread go through the writing connection and see its writes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import msgpack

from nanwatch.columns import StepColumns
from nanwatch.vocabulary import Health, RunStatus
from nanwatch_service.store.base import IngestWrite, StoreError, clamp, rows_to_dicts
from nanwatch_service.store.history import StepHistory
from nanwatch_service.store.rows import CommandRow, EventRow, RunCommandRow, RunRow

_RUN_COLUMNS = (
    "run_id",
    "spec",
    "team",
    "created_at",
    "updated_at",
    "last_seen",
    "last_step",
    "status",
    "health",
    "steps_to_nonfinite",
    "halt",
    "records",
    "dropped",
    "last_attempt",
)
_UPDATABLE = frozenset(_RUN_COLUMNS) - {"run_id", "created_at", "spec"}
_EVENT_COLUMNS = ("id", "detector", "severity", "layer", "state", "first_step", "last_step", "end_step", "doc")
_COMMAND_COLUMNS = (
    "id",
    "action",
    "reason",
    "source",
    "step",
    "at_step",
    "created_at",
    "delivered_at",
    "acked_at",
    "acked_step",
    "sent_by",
)
_PROGRESS = (
    "UPDATE runs SET last_seen = ?, last_step = COALESCE(?, last_step), health = ?, steps_to_nonfinite = ?,"
    " last_attempt = ?, records = records + ?, dropped = CASE WHEN dropped > ? THEN dropped ELSE ? END,"
    " status = COALESCE(?, status), halt = CASE WHEN ? THEN NULL ELSE COALESCE(?, halt) END WHERE run_id = ?"
)


def pack(value: Any) -> bytes:
    """Encode a document for a blob column (floats as float64, bit for bit)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(blob: bytes | memoryview | None) -> Any:
    """Decode a blob column written by :func:`pack`."""
    return None if blob is None else msgpack.unpackb(bytes(blob), raw=False)


class SqlStore(StepHistory):
    """A Store over a writing DB-API connection and, optionally, a reading one (default: the same)."""

    placeholder = "?"
    shared = False

    def __init__(self, connection: Any, errors: tuple[type[BaseException], ...], reader: Any = None) -> None:
        self._conn = connection
        self._reader = connection if reader is None else reader
        self._errors = errors
        self._lock = threading.RLock()
        self._read_lock = self._lock if reader is None else threading.Lock()
        self._depth = 0
        self._writer_thread: int | None = None

    # ---------------------------------------------------------------- plumbing
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            try:
                cursor = self._conn.cursor()
                cursor.execute(self._sql(sql), tuple(params))
            except self._errors as exc:
                raise StoreError(f"database error: {exc}") from exc
            if self._depth == 0:
                self._commit()
            return cursor

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._lock:
            try:
                self._conn.cursor().executemany(self._sql(sql), rows)
            except self._errors as exc:
                raise StoreError(f"database error: {exc}") from exc
            if self._depth == 0:
                self._commit()

    def _query(self, sql: str, params: Sequence[Any], columns: Sequence[str]) -> list[dict[str, Any]]:
        with self._reading() as cursor:
            try:
                cursor.execute(self._sql(sql), tuple(params))
                return rows_to_dicts(columns, cursor.fetchall())
            except self._errors as exc:
                raise StoreError(f"database error: {exc}") from exc

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A cursor for reads: the writing connection inside this thread's transaction, else the reader."""
        if self._depth and self._writer_thread == threading.get_ident():
            with self._lock:
                yield self._conn.cursor()
        else:
            with self._read_lock:
                yield self._reader.cursor()

    def _begin(self) -> None:
        """Start a write transaction (SQLite needs BEGIN IMMEDIATE to avoid upgrade deadlocks)."""

    def _commit(self) -> None:
        self._conn.commit()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes; commit on success, roll back on any exception."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth, self._writer_thread = 1, threading.get_ident()
            try:
                yield
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._commit()
            finally:
                self._depth, self._writer_thread = 0, None

    def ping(self) -> None:
        """Raise StoreError when the database does not answer a trivial query."""
        self._query("SELECT 1", (), ("one",))

    def close(self) -> None:
        """Close the connections."""
        with self._lock, self._read_lock:
            self._conn.close()
            if self._reader is not self._conn:
                self._reader.close()

    def _migrate_legacy_steps(self, legacy_exists: bool) -> None:
        """Move the rows of a per-record ``steps`` table (one row per record) into chunks, one per request
        (consecutive rows of a run with the same attempt and arrival time), and drop that table."""
        if not legacy_exists:
            return
        with self.transaction():
            rows = self._execute(
                "SELECT run_id, attempt, received_at, record FROM steps ORDER BY run_id, seq"
            ).fetchall()
            for (run_id, attempt, received_at), group in itertools.groupby(rows, key=lambda row: row[:3]):
                records = [unpack(row[3]) for row in group]
                columns = StepColumns.from_records(records)
                self._insert_chunks([IngestWrite(run_id, attempt, received_at, columns)])
            self._execute("DROP TABLE steps")

    # ---------------------------------------------------------------- runs
    def upsert_run(self, run_id: str, spec: dict[str, Any], now: float) -> bool:
        """Register or update a run; True when it was new."""
        with self.transaction():
            exists = self._execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
            if exists:
                self._execute(
                    "UPDATE runs SET spec = ?, team = ?, updated_at = ? WHERE run_id = ?",
                    (pack(spec), spec.get("team"), now, run_id),
                )
            else:
                self._execute(
                    "INSERT INTO runs (run_id, spec, team, created_at, updated_at, last_seen, status, health,"
                    " steps_to_nonfinite, records, dropped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
                    (run_id, pack(spec), spec.get("team"), now, now, now, RunStatus.RUNNING, Health.OK, float("inf")),
                )
            return not exists

    def count_runs(self, team: str | None) -> int:
        """How many runs ``team`` holds (None: the runs without a team)."""
        where = "team IS NULL" if team is None else "team = ?"
        rows = self._query(f"SELECT COUNT(*) FROM runs WHERE {where}", () if team is None else (team,), ("n",))
        return int(rows[0]["n"])

    def delete_run(self, run_id: str) -> bool:
        """Delete the run, its history, events and commands; False when there was no such run."""
        with self.transaction():
            for table in ("step_chunks", "events", "commands"):
                self._execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            return bool(self._execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount)

    def runs_seen_before(self, cutoff: float, limit: int) -> list[str]:
        """Up to ``limit`` runs last seen before ``cutoff``, the oldest first."""
        sql = "SELECT run_id FROM runs WHERE last_seen < ? ORDER BY last_seen LIMIT ?"
        return [row["run_id"] for row in self._query(sql, (cutoff, limit), ("run_id",))]

    def get_run(self, run_id: str) -> RunRow | None:
        """The run row with ``spec`` and ``halt`` decoded, or None."""
        rows = self._query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,), _RUN_COLUMNS)
        return _decode_run(rows[0]) if rows else None

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set the given run columns."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not run columns: {sorted(unknown)}")
        if "halt" in fields:
            fields["halt"] = None if fields["halt"] is None else pack(fields["halt"])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*fields.values(), run_id))

    def list_runs(
        self, *, status: str | None, team: str | None, stale_before: float, limit: int, offset: int
    ) -> list[RunRow]:
        """Runs, most recently seen first, filtered by status (``stale`` derived from last_seen) and team."""
        where, params = _run_filters(status, team, stale_before)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs{where} ORDER BY last_seen DESC, run_id LIMIT ? OFFSET ?"
        return [_decode_run(r) for r in self._query(sql, (*params, limit, clamp(offset)), _RUN_COLUMNS)]

    # ---------------------------------------------------------------- ingest
    def write_ingest(self, writes: Sequence[IngestWrite]) -> None:
        """Persist a group of ingest requests in the caller's transaction (see the Store protocol)."""
        with self.transaction():
            self._insert_chunks(writes)
            for write in writes:
                self._write_events_and_commands(write)
            self._execute_many(_PROGRESS, [_progress_row(write) for write in writes if write.progress is not None])

    def _write_events_and_commands(self, write: IngestWrite) -> None:
        for live, snapshot in write.new_events:
            live["id"] = self.insert_event(write.run_id, snapshot)
        for live, snapshot in write.changed_events:
            self.update_event(write.run_id, live["id"], snapshot)
        for command in write.new_commands:
            self.insert_command(write.run_id, command)
        self._execute_many(
            "UPDATE commands SET acked_at = ?, acked_step = ? WHERE run_id = ? AND id = ? AND acked_at IS NULL",
            [(write.received_at, step, write.run_id, command_id) for command_id, step in write.acks],
        )
        self._execute_many(
            "UPDATE commands SET delivered_at = ? WHERE run_id = ? AND id = ?",
            [(write.received_at, write.run_id, command_id) for command_id in write.delivered],
        )

    # ---------------------------------------------------------------- events
    def insert_event(self, run_id: str, event: EventRow) -> int:
        """Store a new event and return its id."""
        cursor = self._execute(
            "INSERT INTO events (run_id, detector, severity, layer, state, first_step, last_step, end_step, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (run_id, *_event_values(event)),
        )
        return int(cursor.fetchone()[0])

    def update_event(self, run_id: str, event_id: int, event: EventRow) -> None:
        """Replace an event's fields."""
        self._execute(
            "UPDATE events SET detector = ?, severity = ?, layer = ?, state = ?, first_step = ?, last_step = ?,"
            " end_step = ?, doc = ? WHERE run_id = ? AND id = ?",
            (*_event_values(event), run_id, event_id),
        )

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
        """Events ordered by id, with their details merged in."""
        sql = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE run_id = ? AND id > ?"
        params: list[Any] = [run_id, clamp(after_id)]
        for column, value in (("state", state), ("severity", severity), ("detector", detector)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        rows = self._query(sql + " ORDER BY id LIMIT ?", (*params, limit), _EVENT_COLUMNS)
        return [cast(EventRow, {**unpack(row.pop("doc")), **row}) for row in rows]

    # ---------------------------------------------------------------- commands
    def insert_command(self, run_id: str, command: CommandRow) -> None:
        """Queue a command (and tell the other replicas, once it is committed)."""
        columns, marks = ", ".join(_COMMAND_COLUMNS), ", ?" * len(_COMMAND_COLUMNS)
        with self.transaction():
            self._execute(
                f"INSERT INTO commands (run_id, {columns}) VALUES (?{marks})",
                (run_id, *(command.get(c) for c in _COMMAND_COLUMNS)),
            )
            self._announce_command(run_id, command["id"])

    def _announce_command(self, run_id: str, command_id: str) -> None:
        """Tell the other replicas of a new command when the transaction commits (none share SQLite)."""

    def listen_commands(self, heard: Callable[[str, str], None]) -> Callable[[], None]:
        """Nothing to hear: no other replica writes this store."""
        return lambda: None

    def active_halt(self, run_id: str) -> CommandRow | None:
        """The run's latest halt command (pending or acknowledged), or None."""
        rows = self._commands("run_id = ? AND action = 'halt' ORDER BY created_at DESC LIMIT 1", (run_id,))
        return rows[0] if rows else None

    def pending_commands(self, run_id: str) -> list[CommandRow]:
        """The run's unacknowledged commands, oldest first."""
        return self._commands("run_id = ? AND acked_at IS NULL ORDER BY created_at", (run_id,))

    def get_command(self, run_id: str, command_id: str) -> CommandRow | None:
        """One command of the run, or None."""
        rows = self._commands("run_id = ? AND id = ?", (run_id, command_id))
        return rows[0] if rows else None

    def pending_halts(self, run_ids: Sequence[str]) -> dict[str, CommandRow]:
        """The latest unacknowledged halt of each run that has one."""
        if not run_ids:
            return {}
        columns = ("run_id", *_COMMAND_COLUMNS)
        marks = ", ".join("?" * len(run_ids))
        sql = f"SELECT {', '.join(columns)} FROM commands WHERE run_id IN ({marks}) AND action = 'halt'"
        rows = self._query(f"{sql} AND acked_at IS NULL ORDER BY created_at", tuple(run_ids), columns)
        return {row.pop("run_id"): cast(CommandRow, row) for row in rows}

    def unacked_commands(self) -> list[RunCommandRow]:
        """Every unacknowledged command, with its run_id."""
        columns = ("run_id", *_COMMAND_COLUMNS)
        sql = f"SELECT {', '.join(columns)} FROM commands WHERE acked_at IS NULL ORDER BY created_at"
        return cast(list[RunCommandRow], self._query(sql, (), columns))

    def ack_command(self, run_id: str, command_id: str, step: int, now: float) -> CommandRow | None:
        """Record where the job applied a command (the first acknowledgement wins)."""
        with self.transaction():
            self._execute(
                "UPDATE commands SET acked_at = ?, acked_step = ? WHERE run_id = ? AND id = ? AND acked_at IS NULL",
                (now, step, run_id, command_id),
            )
            return self.get_command(run_id, command_id)

    def _commands(self, where: str, params: Sequence[Any]) -> list[CommandRow]:
        sql = f"SELECT {', '.join(_COMMAND_COLUMNS)} FROM commands WHERE {where}"
        return cast(list[CommandRow], self._query(sql, params, _COMMAND_COLUMNS))


def _progress_row(write: IngestWrite) -> tuple[Any, ...]:
    p = write.progress
    assert p is not None
    halt = None if p.halt is None else pack(p.halt)
    return (
        p.last_seen,
        p.last_step,
        p.health,
        p.steps_to_nonfinite,
        p.attempt,
        p.stored,
        p.dropped,
        p.dropped,
        p.status,
        p.clear_halt,
        halt,
        write.run_id,
    )


def _decode_run(row: dict[str, Any]) -> RunRow:
    row["spec"] = unpack(row["spec"])
    row["halt"] = unpack(row["halt"])
    return cast(RunRow, row)


def _run_filters(status: str | None, team: str | None, stale_before: float) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if status == RunStatus.STALE:
        clauses.append("status = ? AND last_seen < ?")
        params += [RunStatus.RUNNING, stale_before]
    elif status == RunStatus.RUNNING:
        clauses.append("status = ? AND last_seen >= ?")
        params += [RunStatus.RUNNING, stale_before]
    elif status is not None:
        clauses.append("status = ?")
        params.append(status)
    if team is not None:
        clauses.append("team = ?")
        params.append(team)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _event_values(event: EventRow) -> tuple[Any, ...]:
    columns = ("detector", "severity", "layer", "state", "first_step", "last_step", "end_step")
    doc = {k: v for k, v in event.items() if k not in columns and k != "id"}
    return (*(event.get(c) for c in columns), pack(doc))
