"""The default store: one SQLite file in WAL mode, no other server needed.

WAL with ``synchronous=NORMAL`` keeps every committed transaction across a killed process (only a power
loss can cost the last few); the service commits before it answers, so what it acknowledged survives.
A second connection reads, so history reads never wait behind a commit (WAL lets readers run beside the
one writer). One SQLite file serves one replica; run several replicas on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nanwatch_service.store.sql import SqlStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, spec BLOB NOT NULL, team TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, last_seen REAL NOT NULL,
    last_step INTEGER, status TEXT NOT NULL, health TEXT NOT NULL, steps_to_nonfinite REAL,
    halt BLOB, records INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0, last_attempt TEXT
);
CREATE INDEX IF NOT EXISTS runs_last_seen ON runs (last_seen);
CREATE TABLE IF NOT EXISTS step_chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, attempt TEXT NOT NULL,
    min_step INTEGER NOT NULL, max_step INTEGER NOT NULL, n INTEGER NOT NULL, received_at REAL NOT NULL,
    head BLOB NOT NULL, layers BLOB NOT NULL, compacted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS step_chunks_run_id ON step_chunks (run_id, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, detector TEXT NOT NULL,
    severity TEXT NOT NULL, layer TEXT, state TEXT NOT NULL, first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL, end_step INTEGER, doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run_id ON events (run_id, id);
CREATE TABLE IF NOT EXISTS commands (
    run_id TEXT NOT NULL, id TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
    source TEXT NOT NULL, step INTEGER, at_step INTEGER, created_at REAL NOT NULL,
    delivered_at REAL, acked_at REAL, acked_step INTEGER, sent_by TEXT, PRIMARY KEY (run_id, id)
);
"""
ADDED_COLUMNS = (("step_chunks", "compacted INTEGER NOT NULL DEFAULT 0"), ("commands", "sent_by TEXT"))
"""Columns that a store made by an earlier schema lacks: added when it opens."""
INDEXES = "CREATE INDEX IF NOT EXISTS step_chunks_fresh ON step_chunks (run_id) WHERE compacted = 0;"


class SqliteStore(SqlStore):
    """Store in one SQLite file (``:memory:`` for a throwaway one, read and written on one connection)."""

    def __init__(self, path: str | Path) -> None:
        writer = _connect(path)
        writer.executescript(SCHEMA)
        _add_columns(writer)
        writer.executescript(INDEXES)
        reader = None if str(path) == ":memory:" else _connect(path)
        super().__init__(writer, (sqlite3.Error,), reader)
        legacy = writer.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'steps'").fetchone()
        self._migrate_legacy_steps(legacy is not None)

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")


def _add_columns(connection: sqlite3.Connection) -> None:
    for table, column in ADDED_COLUMNS:
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if column.split()[0] not in present:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _connect(path: str | Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection
