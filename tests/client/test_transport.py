"""The client's transport and command channel: keep-alive HTTP, the MockTransport seam, reconnects."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from nanwatch import Monitor, protocol
from nanwatch.transport import HttpTransport, MockTransport, Reply, Request
from tests.conftest import wait_until
from tests.loopback import LoopbackServer

from .conftest import FakeService, LogCapture


class KeepAliveServer(LoopbackServer):
    """HTTP/1.1 on 127.0.0.1 that counts the TCP connections it accepts; ``close_after`` answers close the
    connection after that many requests on it (as a server dropping idle keep-alive connections does)."""

    def __init__(self, close_after: int = 0) -> None:
        self.connections = 0
        self.close_after = close_after
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            served = 0

            def setup(self) -> None:
                super().setup()
                outer.connections += 1

            def do_GET(self) -> None:
                self.served += 1
                body = protocol.dumps({"path": self.path}, protocol.JSON)
                self.send_response(200)
                self.send_header("Content-Type", protocol.JSON)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if outer.close_after and self.served >= outer.close_after:
                    self.close_connection = True  # silently: no Connection: close header

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler, name="keep-alive-server")


def test_requests_of_one_thread_share_one_kept_alive_connection() -> None:
    with KeepAliveServer() as server:
        transport = HttpTransport(server.url)
        replies = [transport.request(Request("GET", f"/x/{i}")) for i in range(5)]
        transport.close()
    assert [r.status for r in replies] == [200] * 5 and server.connections == 1


def test_a_kept_alive_connection_the_server_dropped_is_replaced_without_a_failure() -> None:
    with KeepAliveServer(close_after=1) as server:
        transport = HttpTransport(server.url)
        replies = []
        for i in range(3):
            replies.append(transport.request(Request("GET", f"/x/{i}")))
            wait_until(lambda n=i: server.connections >= n + 1, what="the server to drop the connection")
        transport.close()
    assert [r.status for r in replies] == [200, 200, 200]


def test_close_ends_a_request_waiting_on_another_thread_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        transport = HttpTransport(f"http://127.0.0.1:{silent.getsockname()[1]}")
        replies: list[Reply] = []
        waiting = threading.Thread(
            target=lambda: replies.append(transport.request(Request("GET", "/wait", timeout=60)))
        )
        waiting.start()
        connection, _ = silent.accept()
        with connection:
            transport.close()
            waiting.join(10)
    assert not waiting.is_alive() and replies[0].status == 0
    assert transport.request(Request("GET", "/later")).error == "the transport is closed"


def _scripted(commands_after: int, halt: dict[str, Any]) -> tuple[MockTransport, list[str]]:
    """A service as a handler: registrations and batches succeed; the command channel fails (no answer)
    ``commands_after`` times, then hands out ``halt`` on every poll."""
    polls: list[str] = []

    def handler(request: Request) -> Reply:
        if request.method == "GET":
            polls.append(request.path)
            if len(polls) <= commands_after:
                return Reply(0, error="ConnectionRefusedError: the channel is cut")
            if f"known={halt['id']}" in request.path:
                time.sleep(0.05)  # a long poll with nothing new, kept short
                return Reply(200, protocol.dumps({"commands": []}), protocol.MSGPACK)
            return Reply(200, protocol.dumps({"commands": [halt]}), protocol.MSGPACK)
        if request.method == "PUT":
            return Reply(201, b"{}", protocol.JSON)
        return Reply(200, protocol.dumps({"accepted": 1, "commands": []}), protocol.MSGPACK)

    return MockTransport(handler), polls


HALT = {"id": "h1", "action": "halt", "reason": "stop", "source": "operator", "step": 3, "at_step": 3}


def test_the_channel_reconnects_after_failures_and_its_halt_is_applied_once(logs: LogCapture) -> None:
    transport, polls = _scripted(commands_after=3, halt=HALT)
    monitor = Monitor("http://nanwatch.invalid", run_id="r", transport=transport, logger=logs.logger)
    halts = []
    deadline = time.monotonic() + 30
    step = 0
    while time.monotonic() < deadline and len(polls) < 6:  # backoff 0.5 s, 1 s, 2 s (jittered), then polls
        halts.append(monitor.log_step(step, loss=1.0))
        step += 1
        time.sleep(0.01)
    monitor.close()
    applied = [h for h in halts if h is not None]
    assert [(h.command_id, h.source, h.step) for h in applied] == [("h1", "operator", applied[0].step)]
    assert len(polls) >= 6 and "known=h1" in polls[-1]  # later polls say the job has it already
    posts = [r for r in transport.requests if r.method == "POST"]
    acks = [a for r in posts for a in protocol.decode_batch(protocol.loads(r.body))["acks"]]
    assert acks == [{"id": "h1", "step": applied[0].step}]


def test_without_the_channel_no_poll_is_made(fake_service: FakeService, logs: LogCapture) -> None:
    with Monitor(fake_service.url, run_id="quiet", command_channel=False, logger=logs.logger) as monitor:
        monitor.log_step(0, loss=1.0)
    assert fake_service.polls == [] and fake_service.steps("quiet") == [0]


def test_a_halt_queued_while_the_job_waits_comes_over_the_channel_before_any_batch(
    fake_service: FakeService, logs: LogCapture
) -> None:
    monitor = Monitor(fake_service.url, run_id="chan", flush_interval=60.0, logger=logs.logger)
    wait_until(lambda: "chan" in fake_service.runs, what="the registration")
    command_id = fake_service.queue_command("chan", reason="now", at_step=None)
    wait_until(lambda: any(c for run, c in fake_service.polls if run == "chan"), what="the channel to answer")
    assert fake_service.seen("POST", "chan") == []  # nothing logged yet: no batch could have carried it
    halt = monitor.log_step(0, loss=1.0)
    monitor.close()
    assert halt is not None and (halt.command_id, halt.reason) == (command_id, "now")
