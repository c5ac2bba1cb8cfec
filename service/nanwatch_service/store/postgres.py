"""PostgreSQL store, for several interchangeable replicas (``--database-url postgresql://...``).

Tables are keyed by ``run_id`` first (primary keys ``(run_id, seq)``/``(run_id, id)``), so that the
history can be distributed by run (e.g. Citus) without changes. Needs ``pip install nanwatch[postgres]``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from nanwatch_service.store.sql import SqlStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, spec BYTEA NOT NULL, team TEXT,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL, last_step BIGINT, status TEXT NOT NULL, health TEXT NOT NULL,
    steps_to_nonfinite DOUBLE PRECISION, halt BYTEA, records BIGINT NOT NULL DEFAULT 0,
    dropped BIGINT NOT NULL DEFAULT 0, last_attempt TEXT
);
CREATE INDEX IF NOT EXISTS runs_last_seen ON runs (last_seen);
CREATE TABLE IF NOT EXISTS step_chunks (
    run_id TEXT NOT NULL, id BIGINT GENERATED ALWAYS AS IDENTITY, attempt TEXT NOT NULL,
    min_step BIGINT NOT NULL, max_step BIGINT NOT NULL, n INTEGER NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, head BYTEA NOT NULL, layers BYTEA NOT NULL,
    compacted SMALLINT NOT NULL DEFAULT 0, PRIMARY KEY (run_id, id)
);
-- packed float64 hardly compresses: storing the blobs out of line uncompressed saves TOAST's pglz pass
ALTER TABLE step_chunks ALTER COLUMN head SET STORAGE EXTERNAL, ALTER COLUMN layers SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL, id BIGINT GENERATED ALWAYS AS IDENTITY, detector TEXT NOT NULL,
    severity TEXT NOT NULL, layer TEXT, state TEXT NOT NULL, first_step BIGINT NOT NULL,
    last_step BIGINT NOT NULL, end_step BIGINT, doc BYTEA NOT NULL, PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS commands (
    run_id TEXT NOT NULL, id TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
    source TEXT NOT NULL, step BIGINT, at_step BIGINT, created_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION, acked_at DOUBLE PRECISION, acked_step BIGINT, sent_by TEXT,
    PRIMARY KEY (run_id, id)
);
ALTER TABLE step_chunks ADD COLUMN IF NOT EXISTS compacted SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN IF NOT EXISTS sent_by TEXT;
CREATE INDEX IF NOT EXISTS step_chunks_fresh ON step_chunks (run_id) WHERE compacted = 0;
"""


class PostgresStore(SqlStore):
    """Store in a PostgreSQL database given by a ``postgresql://`` URL; a second connection reads."""

    placeholder = "%s"
    shared = True

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ImportError("the PostgreSQL store needs psycopg: pip install 'nanwatch[postgres]'") from None
        connection: Any = psycopg.connect(url, autocommit=False)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(727274)")  # replicas create the schema one at a time
            cursor.execute(SCHEMA)
            legacy = cursor.execute("SELECT to_regclass('steps') IS NOT NULL").fetchone()[0]
            schema = cursor.execute("SELECT current_schema()").fetchone()[0]
        connection.commit()
        super().__init__(connection, (psycopg.Error,), psycopg.connect(url, autocommit=True))
        self._url = url
        self._channel = f"nanwatch_commands_{schema}"[:63]  # one database may hold several schemas
        self._migrate_legacy_steps(bool(legacy))
        self._execute("SELECT pg_advisory_unlock(727274)")

    def _announce_command(self, run_id: str, command_id: str) -> None:
        """``NOTIFY`` the other replicas; PostgreSQL delivers it when the transaction commits."""
        self._execute("SELECT pg_notify(?, ?)", (self._channel, f"{run_id} {command_id}"))

    def listen_commands(self, heard: Callable[[str, str], None]) -> Callable[[], None]:
        """``LISTEN`` on a connection of its own, in a thread; reconnect with backoff after a failure
        (the engine's poll covers what was missed meanwhile)."""
        import psycopg

        stop = threading.Event()

        def listen() -> None:
            delay = 0.5
            while not stop.is_set():
                try:
                    with psycopg.connect(self._url, autocommit=True) as connection:
                        connection.execute(f'LISTEN "{self._channel}"')
                        delay = 0.5
                        while not stop.is_set():
                            for notice in connection.notifies(timeout=0.5):
                                run_id, _, command_id = notice.payload.partition(" ")
                                heard(run_id, command_id)
                except psycopg.Error:
                    stop.wait(delay)
                    delay = min(2 * delay, 10.0)

        thread = threading.Thread(target=listen, name="nanwatch-listen", daemon=True)
        thread.start()

        def stop_listening() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_listening
