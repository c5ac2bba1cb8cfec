"""The detectors on step records recorded from the scenario suite's real TF runs (see traces/record.py).

Each scenario's fate was measured without monitoring: the step whose record first holds a non-finite value.
A halt decided at a step reaches the job at a later batch end, so criticals must come before that.
"""

from __future__ import annotations

import gzip
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from nanwatch import protocol
from nanwatch_service.detectors import Finding, Pipeline
from tests.floats import bits

from .records import first_step

TRACES = Path(__file__).with_name("traces")


def load(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    trace = protocol.loads(gzip.decompress((TRACES / f"{name}.json.gz").read_bytes()), protocol.JSON)
    run = protocol.decode_run(trace["run"])
    return run, [protocol.decode_record(r, n_layers=len(run["layers"])) for r in trace["records"]]


def replay(name: str, batch: int = 10) -> list[Finding]:
    run, records = load(name)
    pipeline = Pipeline(run)
    findings: list[Finding] = []
    for i in range(0, len(records), batch):
        findings += pipeline.process(records[i : i + batch])
    return findings


def replay_columns(name: str, batch: int) -> list[Finding]:
    """The trace as the service receives it from the client: protocol-2 batches of ``batch`` records."""
    run, records = load(name)
    pipeline = Pipeline(run)
    findings: list[Finding] = []
    for i in range(0, len(records), batch):
        body, content_type = protocol.encode_batch(records[i : i + batch], attempt="a", n_layers=len(run["layers"]))
        findings += pipeline.process(protocol.decode_steps(protocol.loads(body, content_type)).columns)
    return findings


def _exact(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return [(*astuple(f)[:4], *astuple(f)[6:8], bits([f.value, f.threshold, f.steps_to_nonfinite])) for f in findings]


TRACE_NAMES = sorted(path.name.removesuffix(".json.gz") for path in TRACES.glob("*.json.gz"))


@pytest.mark.parametrize("name", TRACE_NAMES)
def test_whole_column_batches_find_exactly_what_record_by_record_finds(name: str) -> None:
    one_by_one = _exact(replay(name, batch=1))
    assert _exact(replay_columns(name, batch=50)) == one_by_one
    assert _exact(replay_columns(name, batch=10_000)) == one_by_one


def precursors(findings: list[Finding], *severities: str) -> list[Finding]:
    return [f for f in findings if f.detector != "nonfinite" and f.severity in severities]


def test_s3_nan_at_step_0_names_the_custom_layer_and_the_epsilon() -> None:
    first = replay("S3")[0]
    assert (first.step, first.detector, first.severity) == (0, "nonfinite", "critical")
    assert "my_custom_layer" in first.message
    assert "epsilon to the denominator" in first.remedy


def test_s4_amplification_is_a_warning_and_nothing_halts() -> None:
    findings = replay("S4")
    assert any(f.detector == "amplification" and f.step == 0 for f in findings)
    assert [f for f in findings if f.severity == "critical"] == []


@pytest.mark.parametrize(
    ("name", "nonfinite_at"),
    [("S5", 15), ("S6", 87), ("S7", 16)],
)
def test_diverging_scenarios_warn_3_steps_ahead_and_go_critical_before_nonfinite(name: str, nonfinite_at: int) -> None:
    findings = replay(name)
    assert first_step(precursors(findings, "warning", "critical")) <= nonfinite_at - 3  # type: ignore[operator]
    assert first_step(precursors(findings, "critical")) <= nonfinite_at - 3  # type: ignore[operator]
    assert first_step([f for f in findings if f.detector == "nonfinite"]) == nonfinite_at


@pytest.mark.parametrize("name", ["S1", "S2", "S8a", "S8b", "S8c"])
def test_alarming_but_healthy_runs_raise_no_warning(name: str) -> None:
    assert [f for f in replay(name) if f.severity != "info"] == []


def test_s5_forecast_is_the_gradient_norm() -> None:
    [critical, *_] = precursors(replay("S5"), "critical")
    assert critical.detector == "grad_explosion"
    assert critical.steps_to_nonfinite is not None and critical.steps_to_nonfinite <= 10
