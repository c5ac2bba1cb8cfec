"""/metrics exposes each active run's state and the service's own counters."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply


def _samples(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = service.client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _run_value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, run_id: str) -> float:
    [value] = [v for (n, labels), v in samples.items() if n == name and ("run_id", run_id) in labels]
    return value


def test_run_metrics_show_loss_step_health_forecast_and_halt(service: Service) -> None:
    register(service.client, "m1", team="vision")
    reply(post_steps(service.client, "m1", [record(s, loss=0.25) for s in range(3)]))
    samples = _samples(service)
    assert _run_value(samples, "nanwatch_run_loss", "m1") == 0.25
    assert _run_value(samples, "nanwatch_run_step", "m1") == 2
    assert _run_value(samples, "nanwatch_run_health", "m1") == 0
    assert _run_value(samples, "nanwatch_run_steps_to_nonfinite", "m1") == math.inf
    assert _run_value(samples, "nanwatch_run_halted", "m1") == 0
    assert ("nanwatch_run_loss", (("run_id", "m1"), ("team", "vision"))) in samples
    assert samples[("nanwatch_ingest_records_total", ())] == 3
    assert samples[("nanwatch_active_runs", ())] == 1

    answer = reply(post_steps(service.client, "m1", [record(3, loss=math.nan)]))
    [command] = answer["commands"]
    reply(post_steps(service.client, "m1", [], acks=[{"id": command["id"], "step": 4}]))
    samples = _samples(service)
    assert math.isnan(_run_value(samples, "nanwatch_run_loss", "m1"))
    assert _run_value(samples, "nanwatch_run_health", "m1") == 2
    assert _run_value(samples, "nanwatch_run_halted", "m1") == 1
    events = [
        v
        for (n, labels), v in samples.items()
        if n == "nanwatch_events_total"
        and dict(labels).get("detector") == "nonfinite"
        and dict(labels)["severity"] == "critical"
    ]
    assert events == [1]
    assert samples[("nanwatch_halts_total", (("source", "detector"),))] == 1


def test_a_finished_run_stops_being_exported(service: Service) -> None:
    register(service.client, "gone")
    reply(post_steps(service.client, "gone", [record(0)]))
    assert any(("run_id", "gone") in labels for _, labels in _samples(service))
    reply(post_steps(service.client, "gone", [record(1)], final=True))
    samples = _samples(service)
    assert not any(("run_id", "gone") in labels for _, labels in samples)
    assert samples[("nanwatch_active_runs", ())] == 0


def test_ingest_latency_is_observed(service: Service) -> None:
    register(service.client, "lat")
    for step in range(4):
        reply(post_steps(service.client, "lat", [record(step)]))
    samples = _samples(service)
    assert samples[("nanwatch_ingest_request_duration_seconds_count", ())] == 4
