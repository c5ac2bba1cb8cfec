"""One SQL implementation of the Store protocol, shared by SQLite and PostgreSQL.

The two differ only in the connection, the placeholder style and the schema (how an id is generated);
every query is written once, with ``?`` placeholders, and rewritten for psycopg's ``%s``.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np

from nanwatch_service.detectors.batch import Batch
from nanwatch_service.store.base import SERIES_FIELDS, Column, Steps, StoreError, rows_to_dicts

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
)


def pack(value: Any) -> bytes:
    """Encode a document for a blob column (floats as float64, bit for bit)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(blob: bytes | memoryview | None) -> Any:
    """Decode a blob column written by :func:`pack`."""
    return None if blob is None else msgpack.unpackb(bytes(blob), raw=False)


class SqlStore:
    """A Store over one DB-API connection guarded by a lock (one writer per replica)."""

    placeholder = "?"

    def __init__(self, connection: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._conn = connection
        self._errors = errors
        self._lock = threading.RLock()
        self._depth = 0

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

    def _query(self, sql: str, params: Sequence[Any], columns: Sequence[str]) -> list[dict[str, Any]]:
        with self._lock:
            return rows_to_dicts(columns, self._execute(sql, params).fetchall())

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
            self._depth = 1
            try:
                yield
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._commit()
            finally:
                self._depth = 0

    def ping(self) -> None:
        """Raise StoreError when the database does not answer a trivial query."""
        self._execute("SELECT 1").fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

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
                    " steps_to_nonfinite, records, dropped) VALUES (?, ?, ?, ?, ?, ?, 'running', 'ok', ?, 0, 0)",
                    (run_id, pack(spec), spec.get("team"), now, now, now, float("inf")),
                )
            return not exists

    def get_run(self, run_id: str) -> dict[str, Any] | None:
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

    def count_records(self, run_id: str, *, stored: int, dropped: int) -> None:
        """Add ``stored`` to the run's record count and raise its drop count to ``dropped``, in SQL, so
        concurrent replicas never lose an increment."""
        self._execute(
            "UPDATE runs SET records = records + ?,"
            " dropped = CASE WHEN dropped > ? THEN dropped ELSE ? END WHERE run_id = ?",
            (stored, dropped, dropped, run_id),
        )

    def list_runs(
        self, *, status: str | None, team: str | None, stale_before: float, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Runs, most recently seen first, filtered by status (``stale`` derived from last_seen) and team."""
        where, params = _run_filters(status, team, stale_before)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs{where} ORDER BY last_seen DESC, run_id LIMIT ? OFFSET ?"
        return [_decode_run(r) for r in self._query(sql, (*params, limit, offset), _RUN_COLUMNS)]

    # ---------------------------------------------------------------- steps
    def insert_steps(self, run_id: str, attempt: str, records: Sequence[dict[str, Any]], now: float) -> None:
        """Append records in order."""
        rows = [(run_id, attempt, r["step"], now, pack(r)) for r in records]
        with self._lock:
            try:
                self._conn.cursor().executemany(
                    self._sql("INSERT INTO steps (run_id, attempt, step, received_at, record) VALUES (?, ?, ?, ?, ?)"),
                    rows,
                )
            except self._errors as exc:
                raise StoreError(f"database error: {exc}") from exc
            if self._depth == 0:
                self._commit()

    def read_steps(
        self, run_id: str, *, start: int | None, end: int | None, attempt: str | None, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        """Rows ``{seq, attempt, received_at, record}`` ordered by seq."""
        sql = "SELECT seq, attempt, received_at, record FROM steps WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, after_seq]
        for clause, value in (("step >= ?", start), ("step <= ?", end), ("attempt = ?", attempt)):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        rows = self._query(sql + " ORDER BY seq LIMIT ?", (*params, limit), ("seq", "attempt", "received_at", "record"))
        for row in rows:
            row["record"] = unpack(row["record"])
        return rows

    def recent_records(self, run_id: str, n: int) -> list[dict[str, Any]]:
        """The last ``n`` records in arrival order."""
        rows = self._query(
            "SELECT record FROM steps WHERE run_id = ? ORDER BY seq DESC LIMIT ?", (run_id, n), ("record",)
        )
        return [unpack(r["record"]) for r in reversed(rows)]

    def read_series(
        self, run_id: str, fields: Sequence[str], *, start: int | None, end: int | None, attempt: str | None = None
    ) -> tuple[Steps, dict[str, Column]]:
        """The history as columns (see :meth:`Store.read_series`), decoded from the records' blobs."""
        unknown = [field for field in fields if field not in SERIES_FIELDS]
        if unknown:
            raise ValueError(f"unknown series field(s) {unknown}; choose from {', '.join(SERIES_FIELDS)}")
        run = self.get_run(run_id)
        n_layers = len(run["spec"].get("layers", [])) if run else 0
        sql = "SELECT step, record FROM steps WHERE run_id = ?"
        params: list[Any] = [run_id]
        for clause, value in (("step >= ?", start), ("step <= ?", end), ("attempt = ?", attempt)):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        with self._lock:
            rows = self._execute(sql + " ORDER BY seq", params).fetchall()
        if not rows:  # a Batch needs a record
            nothing = np.zeros(0, dtype=bool)
            empty = {f: (np.zeros((0, n_layers) if f.startswith("layers.") else 0), nothing) for f in fields}
            return np.zeros(0, dtype=np.int64), empty
        with _collector_paused():
            batch = Batch([unpack(record) for _, record in rows], n_layers)  # what turns records into columns
            columns = {f: batch.layer(f[7:]) if f.startswith("layers.") else batch.scalar(f) for f in fields}
            steps = batch.steps
            del batch, rows  # the decoded records go while the collector rests, not under its first full pass
        return steps, columns

    # ---------------------------------------------------------------- events
    def insert_event(self, run_id: str, event: dict[str, Any]) -> int:
        """Store a new event and return its id."""
        cursor = self._execute(
            "INSERT INTO events (run_id, detector, severity, layer, state, first_step, last_step, end_step, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (run_id, *_event_values(event)),
        )
        return int(cursor.fetchone()[0])

    def update_event(self, run_id: str, event_id: int, event: dict[str, Any]) -> None:
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
    ) -> list[dict[str, Any]]:
        """Events ordered by id, with their details merged in."""
        sql = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE run_id = ? AND id > ?"
        params: list[Any] = [run_id, after_id]
        for column, value in (("state", state), ("severity", severity), ("detector", detector)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        rows = self._query(sql + " ORDER BY id LIMIT ?", (*params, limit), _EVENT_COLUMNS)
        return [{**unpack(row.pop("doc")), **row} for row in rows]

    # ---------------------------------------------------------------- commands
    def insert_command(self, run_id: str, command: dict[str, Any]) -> None:
        """Queue a command."""
        self._execute(
            f"INSERT INTO commands (run_id, {', '.join(_COMMAND_COLUMNS)}) VALUES (?{', ?' * len(_COMMAND_COLUMNS)})",
            (run_id, *(command.get(c) for c in _COMMAND_COLUMNS)),
        )

    def active_halt(self, run_id: str) -> dict[str, Any] | None:
        """The run's latest halt command (pending or acknowledged), or None."""
        rows = self._query(
            f"SELECT {', '.join(_COMMAND_COLUMNS)} FROM commands WHERE run_id = ? AND action = 'halt'"
            " ORDER BY created_at DESC LIMIT 1",
            (run_id,),
            _COMMAND_COLUMNS,
        )
        return rows[0] if rows else None

    def deliverable_commands(self, run_id: str, now: float, redelivery_s: float) -> list[dict[str, Any]]:
        """Unacknowledged commands due for (re)delivery; marks them delivered now."""
        with self.transaction():
            rows = self._query(
                f"SELECT {', '.join(_COMMAND_COLUMNS)} FROM commands WHERE run_id = ? AND acked_at IS NULL"
                " AND (delivered_at IS NULL OR delivered_at < ?) ORDER BY created_at",
                (run_id, now - redelivery_s),
                _COMMAND_COLUMNS,
            )
            for row in rows:
                self._execute(
                    "UPDATE commands SET delivered_at = ? WHERE run_id = ? AND id = ?", (now, run_id, row["id"])
                )
            return rows

    def ack_command(self, run_id: str, command_id: str, step: int, now: float) -> dict[str, Any] | None:
        """Record where the job applied a command (the first acknowledgement wins)."""
        with self.transaction():
            self._execute(
                "UPDATE commands SET acked_at = ?, acked_step = ? WHERE run_id = ? AND id = ? AND acked_at IS NULL",
                (now, step, run_id, command_id),
            )
            rows = self._query(
                f"SELECT {', '.join(_COMMAND_COLUMNS)} FROM commands WHERE run_id = ? AND id = ?",
                (run_id, command_id),
                _COMMAND_COLUMNS,
            )
            return rows[0] if rows else None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector out of a bulk decode. Decoding 100,000 records makes millions of
    containers, which set off full collections that walk them all: half of the decoding time, measured.
    Decoded records hold no cycles, so reference counting frees them anyway."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _decode_run(row: dict[str, Any]) -> dict[str, Any]:
    row["spec"] = unpack(row["spec"])
    row["halt"] = unpack(row["halt"])
    return row


def _run_filters(status: str | None, team: str | None, stale_before: float) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if status == "stale":
        clauses.append("status = 'running' AND last_seen < ?")
        params.append(stale_before)
    elif status == "running":
        clauses.append("status = 'running' AND last_seen >= ?")
        params.append(stale_before)
    elif status is not None:
        clauses.append("status = ?")
        params.append(status)
    if team is not None:
        clauses.append("team = ?")
        params.append(team)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _event_values(event: dict[str, Any]) -> tuple[Any, ...]:
    columns = ("detector", "severity", "layer", "state", "first_step", "last_step", "end_step")
    doc = {k: v for k, v in event.items() if k not in columns and k != "id"}
    return (*(event.get(c) for c in columns), pack(doc))
