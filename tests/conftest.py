"""Shared fixtures: the real service on real uvicorn, on a free loopback port, in a thread or a process.

Every server a test starts is stopped by that test (fixture teardown), even when the test fails.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent

# The same float numerics on every CPU. On CPUs with AVX-512 VNNI/BF16 TensorFlow turns oneDNN on by default
# and oneDNN picks its kernels by instruction set at run time, so a scenario's chaotic divergence turns
# non-finite at another step (on an AMD EPYC with them, S6 stays finite past its recorded step 87 and S5's
# step 15 reads +Inf instead of NaN); TensorFlow's own kernels give the recorded numbers everywhere. Set
# before anything imports TensorFlow; the subprocesses the tests start inherit it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def free_port() -> int:
    """A loopback port that was free a moment ago (for subprocesses that bind it themselves, and for
    clients that must find nothing listening there)."""
    from nanwatch_service.local import loopback_socket

    with loopback_socket() as sock:
        return int(sock.getsockname()[1])


def wait_until(condition: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Service:
    """A running service: its URL and an HTTP client bound to it."""

    url: str
    client: httpx.Client
    db: Path


class ServiceThread:
    """The real app on real uvicorn, served from a thread of the test process (``serve_in_thread``).

    The thread shares the test process's heap and GIL. After TensorFlow tests that heap holds the garbage
    of many models, and one full garbage collection of it was measured at 14 to 30 s (the collector holds
    the GIL throughout); run inside a request it stalled the server past the client's 30 s timeout. So the
    garbage is collected here, on the test's thread, before the server starts.
    """

    def __init__(self, settings: Any, store: Any = None) -> None:
        from nanwatch_service.app import create_app

        self.app = create_app(settings, store=store)
        self.url = ""
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ServiceThread:
        from nanwatch_service.local import serve_in_thread

        gc.collect()
        self.url = self._stack.enter_context(serve_in_thread(self.app, start_timeout=90, stop_timeout=15))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@pytest.fixture(autouse=True)
def collect_tensorflow_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a TensorFlow test (marker ``tf``), its garbage is collected on the test's own thread, so a long
    full collection does not land later inside a server thread's request (see ``ServiceThread``). The Keras
    tests' ``fresh_keras`` fixture already does it (``clear_session``)."""
    yield
    if request.node.get_closest_marker("tf") and "fresh_keras" not in request.fixturenames:
        gc.collect()


PG_URL = os.environ.get("NANWATCH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The test PostgreSQL database; each test that uses it gets a schema of its own (``pg_url``)."""


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL database, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"nw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """The service on SQLite in tmp_path, on real uvicorn."""
    from nanwatch_service.settings import Settings

    db = tmp_path / "nanwatch.db"
    with ServiceThread(Settings(db=str(db))) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield Service(server.url, client, db)


class ChildProcess:
    """A server in a child process with its output in a log file: started once ``health_url`` answers 200,
    stopped (SIGTERM, then SIGKILL) by the test that started it."""

    def __init__(self, name: str, health_url: str, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.name, self.health_url, self.log = name, health_url, log
        self.env = {**os.environ, **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start_process(self, args: list[str]) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, timeout=60, what=f"{self.name} at {self.health_url}")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.health_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class ServiceProcess(ChildProcess):
    """``nanwatch serve`` in a child process (for kill -9, CLI and chain tests)."""

    def __init__(
        self, db: Path, port: int | None = None, extra_env: dict[str, str] | None = None, log_level: str = "warning"
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.log_level = log_level
        super().__init__("nanwatch serve", f"{self.url}/healthz", db.with_suffix(".log"), extra_env)

    def start(self) -> ServiceProcess:
        args = [sys.executable, "-m", "nanwatch_service.cli", "serve", "--port", str(self.port)]
        self.start_process([*args, "--db", str(self.db), "--log-level", self.log_level])
        return self


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A started ``nanwatch serve`` child process on SQLite; stopped after the test."""
    process = ServiceProcess(tmp_path / "nanwatch.db")
    try:
        yield process.start()
    finally:
        process.stop()
