"""Events over REST: one per episode, with what happened inside it, however the records were batched."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply

NEAR = 1e37  # 34x below float32's largest value: an overflow_headroom warning
NEARER = 2e38  # under 2x: critical


def _records() -> list[dict[str, Any]]:
    """An episode that starts (40), turns critical (42), ends after five quiet steps, and one that starts
    again (50)."""
    values = {40: NEAR, 41: NEAR, 42: NEARER, 50: NEAR, 51: NEAR}
    return [record(s, act_max_abs=[values.get(s, 2.0), 2.0, 0.9]) for s in range(40, 52)]


@pytest.mark.parametrize("batch", [1, 3, 12])
def test_an_episode_that_starts_worsens_and_ends_within_one_batch_keeps_what_happened_in_it(
    service: Service, batch: int
) -> None:
    register(service.client, "episodes", halt_on="never")
    reply(post_steps(service.client, "episodes", [record(s) for s in range(40)]))
    records = _records()
    for i in range(0, len(records), batch):
        reply(post_steps(service.client, "episodes", records[i : i + batch]))
    events = service.client.get("/v1/runs/episodes/events", params={"detector": "overflow_headroom"}).json()
    first, second = events["events"]
    assert (first["first_step"], first["last_step"], first["end_step"], first["state"]) == (40, 42, 47, "closed")
    assert first["severity"] == "critical" and first["severity_steps"] == {"warning": 40, "critical": 42}
    assert (second["first_step"], second["last_step"], second["state"], second["severity"]) == (
        50,
        51,
        "open",
        "warning",
    )
