"""What the service acknowledged survives a SIGKILL."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from nanwatch import protocol
from tests.conftest import ServiceProcess, wait_until
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


def _stream_columns(url: str, run_id: str, acknowledged: list[int], stop: threading.Event) -> None:
    """Post protocol-2 batches of 20 records until the service dies; remember each acknowledged step."""
    with httpx.Client(base_url=url, timeout=5) as client:
        for start in range(0, 2_000_000, 20):
            if stop.is_set():
                return
            batch = [record(step) for step in range(start, start + 20)]
            body, content_type = protocol.encode_batch(batch, attempt="a1")
            try:
                response = client.post(f"/v1/runs/{run_id}/steps", content=body, headers={"Content-Type": content_type})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acknowledged.extend(range(start, start + 20))


def test_every_record_acknowledged_to_concurrent_jobs_survives_a_sigkill(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path / "group.db").start()
    runs = [f"job-{i}" for i in range(4)]
    acknowledged: dict[str, list[int]] = {run_id: [] for run_id in runs}
    try:
        with httpx.Client(base_url=service.url) as client:
            for run_id in runs:
                register(client, run_id, halt_on="never")
        stop = threading.Event()
        writers = [
            threading.Thread(target=_stream_columns, args=(service.url, run_id, acknowledged[run_id], stop))
            for run_id in runs
        ]
        for writer in writers:
            writer.start()
        try:
            wait_until(lambda: all(len(a) >= 400 for a in acknowledged.values()), timeout=120, what="20 batches each")
            service.kill()  # mid-stream: group commits in flight
        finally:
            stop.set()
            for writer in writers:
                writer.join(timeout=30)
        service.start()
        with httpx.Client(base_url=service.url) as client:
            for run_id in runs:
                rows = reply(client.get(f"/v1/runs/{run_id}/steps", params={"limit": 10_000}))["steps"]
                assert set(acknowledged[run_id]) <= {row["step"] for row in rows}
                assert client.get(f"/v1/runs/{run_id}").json()["records"] == len(rows)
    finally:
        service.stop()
