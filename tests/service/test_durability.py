"""What the service acknowledged survives a SIGKILL."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.conftest import ServiceProcess
from tests.service.helpers import post_steps, record, register, reply


def _stream(url: str, acknowledged: list[int], stop: threading.Event) -> None:
    """Post one-record batches until the service dies; remember each step it acknowledged."""
    with httpx.Client(base_url=url, timeout=5) as client:
        for step in range(100_000):
            if stop.is_set():
                return
            try:
                response = post_steps(client, "durable", [record(step)])
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acknowledged.append(step)


def test_records_acknowledged_before_a_sigkill_are_all_there_after_restart(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path / "kill.db").start()
    try:
        with httpx.Client(base_url=service.url) as client:
            register(client, "durable", halt_on="never")
        acknowledged: list[int] = []
        stop = threading.Event()
        writer = threading.Thread(target=_stream, args=(service.url, acknowledged, stop))
        writer.start()
        try:
            from tests.conftest import wait_until

            wait_until(lambda: len(acknowledged) >= 200, timeout=120, what="200 acknowledged batches")
            service.kill()  # mid-stream
        finally:
            stop.set()
            writer.join(timeout=30)
        service.start()
        with httpx.Client(base_url=service.url) as client:
            rows = reply(client.get("/v1/runs/durable/steps", params={"limit": 10_000}))["steps"]
            stored = {row["step"] for row in rows}
            assert set(acknowledged) <= stored
            assert client.get("/v1/runs/durable").json()["records"] == len(rows)
    finally:
        service.stop()
