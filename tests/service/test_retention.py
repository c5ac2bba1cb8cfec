"""Retention in a running service: its own pass (every ``retention_interval_s``) keeps a long run's history
bounded while the run streams, and the steps around its events are still served in full."""

from __future__ import annotations

import math
from pathlib import Path

import httpx

from nanwatch_service.settings import Settings
from tests.conftest import ServiceThread, wait_until
from tests.service.helpers import post_steps, record, register, reply


def test_a_long_run_is_downsampled_while_it_streams_and_its_event_is_served_whole(tmp_path: Path) -> None:
    settings = Settings(
        db=str(tmp_path / "nanwatch.db"),
        retain_steps=300,
        retain_every=50,
        retain_around_events=5,
        retention_interval_s=0.2,
    )
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        register(client, "long", halt_on="never")
        for first in range(0, 3_000, 100):
            batch = [record(s, loss=math.nan if s == 1_500 else 0.5) for s in range(first, first + 100)]
            reply(post_steps(client, "long", batch))

        def history() -> list[int]:
            rows = client.get("/v1/runs/long/steps", params={"fields": "loss", "limit": 10_000}).json()["steps"]
            return [row["step"] for row in rows]

        # the newest 300 in full, one per 50 before them, and the steps around the NaN's event
        def compacted() -> list[int] | None:
            steps = history()
            return steps if len(steps) < 400 else None

        kept = wait_until(compacted, what="the history compacted")
        assert kept[-300:] == list(range(2_700, 3_000))
        assert set(range(0, 2_700, 50)) <= set(kept)
        [event] = client.get("/v1/runs/long/events", params={"detector": "nonfinite"}).json()["events"]
        assert event["first_step"] == 1_500
        around = client.get("/v1/runs/long/steps", params={"start": 1_495, "end": 1_505}).json()["steps"]
        assert [row["step"] for row in around] == list(range(1_495, 1_506))
        assert around[5]["loss"] == "NaN" and client.get("/v1/runs/long").json()["records"] == 3_000
