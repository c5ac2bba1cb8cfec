"""Start ``nanwatch serve`` on a free loopback port for a benchmark, and stop it."""

from __future__ import annotations

import contextlib
import os
import signal
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
    database_url: str | None = None, timeout: float = 60.0, db: Path | None = None, profile: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield the URL and process of a ``nanwatch serve``: on ``database_url`` (PostgreSQL) when given, else
    on the SQLite file ``db`` or a fresh one in a temporary folder; terminate it afterwards. With
    ``profile``, the service runs under cProfile (its main thread: the event loop) and writes the stats
    there when it stops."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
        args = [sys.executable, *profiler, "-m", "nanwatch_service.cli", "serve", "--port", str(port)]
        args += ["--log-level", "warning"]
        args += ["--database-url", database_url] if database_url else ["--db", str(db or Path(tmp) / "bench.db")]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, timeout)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            # uvicorn raises SIGTERM again once it has shut down, which kills the process before cProfile
            # writes; SIGINT comes back as KeyboardInterrupt, which cProfile writes through.
            proc.send_signal(signal.SIGINT if profile else signal.SIGTERM)
            proc.wait(timeout=30)


def port_of(url: str) -> int:
    """The port of a ``http://127.0.0.1:PORT`` URL."""
    return int(url.rsplit(":", 1)[1])


def wait_for_port(port: int, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:``port``; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nanwatch serve did not listen on port {port} within {timeout} s")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) the process ``pid`` has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time used so far by every PostgreSQL process on this machine (the server and its backends)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "postgres":
                total += cpu_seconds(int(comm.parent.name))
    return total
