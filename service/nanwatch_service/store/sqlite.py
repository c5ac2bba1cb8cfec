"""The default store: one SQLite file in WAL mode, no other server needed.

WAL with ``synchronous=NORMAL`` keeps every committed transaction across a killed process (only a power
loss can cost the last few); the service commits before it answers, so what it acknowledged survives.
One SQLite file serves one replica; run several replicas on PostgreSQL.
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
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, attempt TEXT NOT NULL,
    step INTEGER NOT NULL, received_at REAL NOT NULL, record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_run_seq ON steps (run_id, seq);
CREATE INDEX IF NOT EXISTS steps_run_step ON steps (run_id, step);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, detector TEXT NOT NULL,
    severity TEXT NOT NULL, layer TEXT, state TEXT NOT NULL, first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL, end_step INTEGER, doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run_id ON events (run_id, id);
CREATE TABLE IF NOT EXISTS commands (
    run_id TEXT NOT NULL, id TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
    source TEXT NOT NULL, step INTEGER, at_step INTEGER, created_at REAL NOT NULL,
    delivered_at REAL, acked_at REAL, acked_step INTEGER, PRIMARY KEY (run_id, id)
);
"""


class SqliteStore(SqlStore):
    """Store in one SQLite file (``:memory:`` for a throwaway one)."""

    def __init__(self, path: str | Path) -> None:
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(SCHEMA)
        super().__init__(connection, (sqlite3.Error,))

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
