"""Start ``nanwatch serve`` on a free loopback port for a benchmark, and stop it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from nanwatch_service.local import loopback_socket


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with loopback_socket() as sock:
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_service(timeout: float = 60.0, db: Path | None = None) -> Iterator[str]:
    """Yield the URL of a service on the SQLite file ``db`` (default: a fresh one in a temporary folder);
    terminate it afterwards."""
    with serving(timeout=timeout, db=db) as (url, _):
        yield url


@contextlib.contextmanager
def serving(
    database_url: str | None = None, timeout: float = 60.0, db: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield the URL and process of a ``nanwatch serve``: on ``database_url`` (PostgreSQL) when given, else
    on the SQLite file ``db`` or a fresh one in a temporary folder; terminate it afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        args = [sys.executable, "-m", "nanwatch_service.cli", "serve", "--port", str(port), "--log-level", "warning"]
        args += ["--database-url", database_url] if database_url else ["--db", str(db or Path(tmp) / "bench.db")]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, timeout)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_for_port(port: int, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:``port``; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nanwatch serve did not listen on port {port} within {timeout} s")
