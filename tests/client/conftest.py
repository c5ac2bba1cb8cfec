"""A small real HTTP service that speaks the protocol (1 and 2), for testing the client's transport.

It answers the command channel too (``GET .../commands``, a long poll kept short); its answers are kept
in ``polls``, apart from ``requests``, which are the registrations and step batches.

``FakeService`` runs the stdlib ``ThreadingHTTPServer`` on 127.0.0.1 in a thread. It validates what it
receives with the protocol's own decoders (a bad message gets a 422, as the real service answers), keeps
registered runs (steps for an unknown run get a 404), records every request, and delivers queued
commands in its ingest replies until they are acknowledged, as the real service does.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from nanwatch import Monitor, protocol
from tests.loopback import LoopbackServer


@dataclass
class Request:
    """One request the fake service received, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any] | None  # the decoded message; None when it did not follow the protocol
    status: int
    commands: list[dict[str, Any]] = field(default_factory=list)  # commands sent in the reply

    @property
    def run_id(self) -> str:
        return self.path.split("/")[3]


class FakeService(LoopbackServer):
    """The service's ingest side: ``PUT /v1/runs/{id}`` and ``POST /v1/runs/{id}/steps``."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.forced_statuses: deque[int] = deque()  # answers for the next step batches, before any check
        self.keep_acked_commands = False  # True: re-send commands even after their ack (a lagging replica)
        self.lock = threading.Condition()
        self.polls: list[tuple[str, list[dict[str, Any]]]] = []  # command channel answers: (run id, commands)
        super().__init__(_Handler, port, name="fake-nanwatch")

    def queue_command(self, run_id: str, reason: str = "stop now", **fields: Any) -> str:
        command = {"id": uuid.uuid4().hex[:16], "action": "halt", "reason": reason, "source": "operator"}
        command |= fields
        with self.lock:
            self.pending.setdefault(run_id, []).append(command)
            self.lock.notify_all()  # command channels waiting for one
        return str(command["id"])

    def forget(self, run_id: str) -> None:
        """Lose a run, as a service restarted on an empty store would."""
        with self.lock:
            self.runs.pop(run_id, None)

    def seen(self, method: str | None = None, run_id: str | None = None) -> list[Request]:
        with self.lock:
            requests = list(self.requests)
        return [
            r for r in requests if (method is None or r.method == method) and (run_id is None or r.run_id == run_id)
        ]

    def batches(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Step batches the service accepted, in arrival order."""
        return [r.body for r in self.seen("POST", run_id) if r.status == 200 and r.body is not None]

    def records(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return [record for batch in self.batches(run_id) for record in batch["records"]]

    def steps(self, run_id: str | None = None) -> list[int]:
        return [record["step"] for record in self.records(run_id)]

    def acks(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return [ack for batch in self.batches(run_id) for ack in batch["acks"]]

    def client_has_read(self, command_id: str) -> bool:
        """True once a reply carried the command and the (sequential) sender posted again after it."""
        posts = self.seen("POST")
        first = next((i for i, r in enumerate(posts) if any(c["id"] == command_id for c in r.commands)), None)
        return first is not None and len(posts) > first + 1

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, str]:
        forced = self._forced(method)
        try:
            body = protocol.loads(raw, protocol.content_type_of(headers.get("content-type")))
            message = protocol.decode_run(body) if method == "PUT" else protocol.decode_batch(body)
        except protocol.ProtocolError as exc:
            return self._record(Request(method, path, headers, None, 422), detail=str(exc))
        request = Request(method, path, headers, message, forced or 200)
        if forced:
            return self._record(request, detail=f"forced {forced} by the test")
        return self._register(request) if method == "PUT" else self._ingest(request)

    def poll(self, path: str) -> tuple[int, bytes, str]:
        """``GET /v1/runs/{id}/commands?wait=&known=``: pending commands the job does not know, at once or
        as soon as one is queued, else none after ``wait`` seconds (kept short here)."""
        url = urllib.parse.urlsplit(path)
        run_id, query = url.path.split("/")[3], urllib.parse.parse_qs(url.query)
        known = set(",".join(query.get("known", [""])).split(","))
        wait = min(float(query.get("wait", ["0"])[0]), 2.0)
        with self.lock:
            if run_id not in self.runs:
                return 404, json.dumps({"detail": f"run {run_id!r} not found"}).encode(), protocol.JSON
            self.lock.wait_for(lambda: [c for c in self.pending.get(run_id, []) if c["id"] not in known], wait)
            commands = [c for c in self.pending.get(run_id, []) if c["id"] not in known]
            self.polls.append((run_id, commands))
        return 200, protocol.dumps({"commands": commands}, protocol.MSGPACK), protocol.MSGPACK

    def _forced(self, method: str) -> int | None:
        with self.lock:
            return self.forced_statuses.popleft() if method == "POST" and self.forced_statuses else None

    def _register(self, request: Request) -> tuple[int, bytes, str]:
        with self.lock:
            self.runs[request.run_id] = request.body or {}
        return self._record(request)

    def _ingest(self, request: Request) -> tuple[int, bytes, str]:
        assert request.body is not None
        with self.lock:
            if request.run_id not in self.runs:
                request.status = 404
            else:
                acked = {ack["id"] for ack in request.body["acks"]}
                kept = [c for c in self.pending.get(request.run_id, []) if c["id"] not in acked]
                self.pending[request.run_id] = (
                    self.pending.get(request.run_id, []) if self.keep_acked_commands else kept
                )
                request.commands = list(self.pending[request.run_id])
        if request.status == 404:
            return self._record(request, detail=f"run {request.run_id!r} not found; register it first")
        reply = {"accepted": len(request.body["records"]), "commands": request.commands}
        self._append(request)
        return 200, protocol.dumps(reply, protocol.MSGPACK), protocol.MSGPACK

    def _record(self, request: Request, detail: str = "") -> tuple[int, bytes, str]:
        self._append(request)
        if request.status == 200:
            return 200, json.dumps({"run_id": request.run_id}).encode(), protocol.JSON
        return request.status, json.dumps({"detail": detail}).encode(), protocol.JSON

    def _append(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        fake: FakeService = self.server.owner  # type: ignore[attr-defined]
        self._send(*fake.poll(self.path))

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake: FakeService = self.server.owner  # type: ignore[attr-defined]
        self._send(*fake.handle(method, self.path, headers, raw))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class LogCapture(logging.Handler):
    """Records of one test's own logger, so a straggling thread of another test cannot leak in."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in list(self.records) if r.levelno == level]


@pytest.fixture
def fake_service() -> Iterator[FakeService]:
    service = FakeService().start()
    yield service
    service.stop()


@pytest.fixture
def start_fake_service() -> Iterator[Callable[[int], FakeService]]:
    """Start a fake service on a given port later in a test (a service that comes back)."""
    started: list[FakeService] = []

    def start(port: int) -> FakeService:
        started.append(FakeService(port).start())
        return started[-1]

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    logger = logging.getLogger(f"nanwatch.test.{uuid.uuid4().hex}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    capture = LogCapture(logger)
    logger.addHandler(capture)
    yield capture
    logger.removeHandler(capture)


@pytest.fixture
def make_monitor(logs: LogCapture) -> Iterator[Callable[..., Monitor]]:
    """Build Monitors that log to the test's logger and flush fast; all are closed at teardown."""
    monitors: list[Monitor] = []

    def make(url: str, run_id: str = "run-a", **kwargs: Any) -> Monitor:
        kwargs.setdefault("flush_interval", 0.05)
        kwargs.setdefault("logger", logs.logger)
        monitors.append(Monitor(url, run_id, **kwargs))
        return monitors[-1]

    yield make
    for monitor in monitors:
        monitor.close(timeout=0.5)
