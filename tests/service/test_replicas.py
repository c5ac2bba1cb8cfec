"""Two real replicas on one real PostgreSQL: a halt reaches the job whichever replica it went through,
over the command channel or, with the channel down, in an ingest reply; it survives a replica's death;
and the job applies it exactly once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nanwatch import Halt, Monitor, protocol
from nanwatch.transport import HttpTransport, Reply, Request
from tests.conftest import ServiceProcess, wait_until
from tests.service.helpers import LAYERS


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Replicas A and B of one service, sharing one PostgreSQL schema."""
    env = {"NANWATCH_DATABASE_URL": pg_url}
    a = ServiceProcess(tmp_path / "a.db", extra_env=env)
    b = ServiceProcess(tmp_path / "b.db", extra_env=env)
    try:
        yield a.start(), b.start()
    finally:
        a.stop()
        b.stop()


class Recording:
    """The real transport, with every exchange it carries kept (the seam the Monitor offers for tests);
    ``slow_channel`` holds each command-channel answer back that many seconds (a slow network path)."""

    def __init__(self, url: str, slow_channel: float = 0.0) -> None:
        self.inner = HttpTransport(url)
        self.slow_channel = slow_channel
        self.exchanges: list[tuple[Request, Reply]] = []

    def request(self, request: Request) -> Reply:
        reply = self.inner.request(request)
        if request.method == "GET":
            time.sleep(self.slow_channel)
        self.exchanges.append((request, reply))
        return reply

    def close(self) -> None:
        self.inner.close()

    def acks(self) -> list[dict[str, object]]:
        posts = [request for request, _ in list(self.exchanges) if request.method == "POST"]
        return [ack for r in posts for ack in protocol.decode_batch(protocol.loads(r.body))["acks"]]

    def carried(self, method: str, command_id: str) -> bool:
        """Whether an answer to a ``method`` request carried the command."""
        for request, reply in list(self.exchanges):
            if request.method == method and reply.ok and reply.body:
                commands = protocol.loads(reply.body, protocol.content_type_of(reply.content_type))["commands"]
                if any(command["id"] == command_id for command in commands):
                    return True
        return False


def _monitor(url: str, run_id: str, **options: object) -> Monitor:
    logger = logging.getLogger(f"nanwatch.test.{run_id}")
    return Monitor(url, run_id=run_id, layers=LAYERS, halt_on="never", logger=logger, **options)  # type: ignore[arg-type]


def _step_until_halted(monitor: Monitor, timeout: float = 30.0) -> tuple[list[Halt], int]:
    """Log a healthy step every 10 ms until a halt comes back; all the halts returned, and the last step."""
    halts: list[Halt] = []
    deadline = time.monotonic() + timeout
    step = 0
    while time.monotonic() < deadline and not halts:
        halt = monitor.log_step(step, loss=0.5, grad_norm=1.0)
        halts += [halt] if halt else []
        step += 1
        time.sleep(0.01)
    assert halts, f"no halt within {timeout} s"
    for later in range(step, step + 30):  # a repeat of the same command must not halt again
        halt = monitor.log_step(later, loss=0.5)
        halts += [halt] if halt else []
        time.sleep(0.01)
    return halts, step - 1


def _halt(url: str, run_id: str, reason: str) -> str:
    response = httpx.post(f"{url}/v1/runs/{run_id}/halt", json={"reason": reason}, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["command"]["id"])


def _registered(url: str, run_id: str) -> bool:
    return httpx.get(f"{url}/v1/runs/{run_id}", timeout=5).status_code == 200


def test_a_halt_sent_to_b_reaches_a_job_streaming_to_a_over_the_command_channel(
    replicas: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = replicas
    # batches only every 60 s: a halt that arrives sooner came over the channel, not in an ingest reply
    with _monitor(a.url, "over-the-channel", flush_interval=60.0) as monitor:
        wait_until(lambda: _registered(a.url, monitor.run_id), what="the registration")
        command_id = _halt(b.url, monitor.run_id, "stop it from B")
        [halt], _ = _step_until_halted(monitor, timeout=20)
    assert (halt.command_id, halt.source, halt.reason) == (command_id, "operator", "stop it from B")
    run = httpx.get(f"{b.url}/v1/runs/{monitor.run_id}").json()
    assert run["status"] == "halted" and run["halt"]["acked_step"] == halt.step  # acknowledged on close


def test_with_the_channel_down_a_halt_through_b_still_arrives_in_an_ingest_reply_from_a(
    replicas: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = replicas
    with _monitor(a.url, "no-channel", command_channel=False, flush_interval=0.1) as monitor:
        wait_until(lambda: _registered(a.url, monitor.run_id), what="the registration")
        command_id = _halt(b.url, monitor.run_id, "stop it from B")
        [halt], _ = _step_until_halted(monitor)
    assert halt.command_id == command_id
    assert httpx.get(f"{a.url}/v1/runs/{monitor.run_id}").json()["status"] == "halted"


def test_a_replica_killed_before_delivering_leaves_its_halt_to_the_other(
    replicas: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = replicas
    with httpx.Client(base_url=a.url) as client:
        assert client.put("/v1/runs/orphan", json={"name": "orphan", "layers": LAYERS}).status_code == 201
    command_id = _halt(a.url, "orphan", "halt before the job came back")
    a.kill()  # no job had asked A for anything since
    with _monitor(b.url, "orphan", flush_interval=0.1) as monitor:
        [halt], _ = _step_until_halted(monitor)
    assert halt.command_id == command_id
    assert httpx.get(f"{b.url}/v1/runs/orphan").json()["status"] == "halted"


def test_a_halt_arriving_both_over_the_channel_and_in_replies_is_applied_and_acknowledged_once(
    replicas: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = replicas
    transport = Recording(a.url, slow_channel=2.0)  # the ingest reply brings it first, the channel later
    with _monitor(a.url, "both-ways", flush_interval=0.05, transport=transport) as monitor:
        wait_until(lambda: _registered(a.url, monitor.run_id), what="the registration")
        command_id = _halt(b.url, monitor.run_id, "once")
        halts, step = _step_until_halted(monitor)
        assert transport.carried("POST", command_id)
        wait_until(lambda: transport.carried("GET", command_id), what="the channel bringing it as well")
        for later in range(step + 30, step + 60):  # the second arrival is not applied again
            assert monitor.log_step(later, loss=0.5) is None
    assert [h.command_id for h in halts] == [command_id]
    assert [ack["id"] for ack in transport.acks()] == [command_id]
