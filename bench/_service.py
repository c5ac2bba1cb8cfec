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
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        args = [sys.executable, "-m", "nanwatch_service.cli", "serve", "--port", str(port)]
        args += ["--db", str(db or Path(tmp) / "bench.db"), "--log-level", "warning"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(port, timeout)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nanwatch serve did not listen on port {port} within {timeout} s")
