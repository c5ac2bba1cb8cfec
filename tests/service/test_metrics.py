"""/metrics exposes each active run's state and the service's own counters."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nanwatch_service.settings import Settings
from tests.conftest import Service, ServiceThread, wait_until
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


def _layer_table(n: int, dtype: str) -> list[dict[str, object]]:
    layer = {"kind": "Dense", "activation": "relu", "params": 10, "dtype": dtype}
    return [{"name": f"dense_{i}", **layer} for i in range(n)]


def test_a_deep_run_exports_only_its_largest_layer_gradient_norms(service: Service) -> None:
    from nanwatch_service.run_state import TOP_LAYERS

    register(service.client, "deep", layers=_layer_table(8, "float32"))
    norms = [0.5, 3.0, 0.1, math.nan, 2.0, 0.2, 0.3, 0.4]
    reply(post_steps(service.client, "deep", [{"step": 0, "layers": {"grad_norm": norms}}]))
    layers = {
        dict(labels)["layer"]: value
        for (name, labels), value in _samples(service).items()
        if name == "nanwatch_run_layer_grad_norm" and ("run_id", "deep") in labels
    }
    assert len(layers) == TOP_LAYERS == 3
    assert math.isnan(layers.pop("dense_3")), "a NaN norm ranks first"
    assert layers == {"dense_1": 3.0, "dense_4": 2.0}


def test_loss_scale_and_the_tightest_activation_against_its_dtype_limit(service: Service) -> None:
    table = _layer_table(2, "float16") + _layer_table(1, "float32")
    table[2]["name"] = "out"
    register(service.client, "mixed", dtype_policy="mixed_float16", layers=table)
    # float16 tops out at 65504: 655.04 there is tighter than 1e30 in the float32 layer.
    first = {"step": 0, "loss_scale": 32768.0, "layers": {"act_max_abs": [2.0, 655.04, 1e30]}}
    later = {"step": 1, "loss": 0.5, "layers": {"grad_norm": [1.0, 1.0, 1.0]}}  # keeps the values before
    reply(post_steps(service.client, "mixed", [first]))
    reply(post_steps(service.client, "mixed", [later]))
    samples = _samples(service)
    assert _run_value(samples, "nanwatch_run_loss_scale", "mixed") == 32768.0
    assert _run_value(samples, "nanwatch_run_act_max_abs", "mixed") == 655.04
    assert _run_value(samples, "nanwatch_run_act_dtype_max", "mixed") == 65504.0
    assert _run_value(samples, "nanwatch_run_overflow_headroom", "mixed") == 100.0


def test_values_a_run_never_sent_have_no_sample(service: Service) -> None:
    register(service.client, "bare", layers=[])
    reply(post_steps(service.client, "bare", [{"step": 0, "grad_norm": 0.5}]))
    names = {name for name, labels in _samples(service) if ("run_id", "bare") in labels}
    assert "nanwatch_run_loss" not in names, "a missing loss must not read NaN: NanwatchNonfiniteLoss would fire"
    assert not names & {"nanwatch_run_loss_scale", "nanwatch_run_act_max_abs", "nanwatch_run_layer_grad_norm"}
    assert {"nanwatch_run_grad_norm", "nanwatch_run_step", "nanwatch_run_health"} <= names


def test_a_silent_run_stops_being_exported(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "nanwatch.db"), stale_after_s=1.0)
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        service = Service(server.url, client, tmp_path / "nanwatch.db")
        register(client, "quiet")
        reply(post_steps(client, "quiet", [record(0)]))
        assert any(("run_id", "quiet") in labels for _, labels in _samples(service))
        wait_until(
            lambda: not any(("run_id", "quiet") in labels for _, labels in _samples(service)),
            what="the silent run to leave /metrics",
        )
        assert _samples(service)[("nanwatch_active_runs", ())] == 0


def test_store_commit_latency_is_observed(service: Service) -> None:
    register(service.client, "commits")
    for step in range(3):
        reply(post_steps(service.client, "commits", [record(step)]))
    assert _samples(service)[("nanwatch_store_commit_duration_seconds_count", ())] == 3
