"""Pipeline: batching, warm-up from stored history, absent fields and degenerate layer tables."""

from __future__ import annotations

import array
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanwatch import protocol
from nanwatch_service.detectors import DEFAULT_DETECTORS, Finding, Pipeline

from .records import Run, layer, relu_mlp, run_all

CATALOG = set(
    """nonfinite grad_explosion loss_spike overflow_headroom amplification zero_variance saturation dead_relu
    vanishing_gradient update_ratio loss_scale""".split()  # noqa: SIM905
)


def eventful_records(run: Run) -> list[dict[str, Any]]:
    """Noisy healthy steps, then a spike, a saturating output, and a divergence to NaN."""
    run.noise = 0.1
    records = run.records(80)
    records.append(run.record(80, grad_norm=40.0, loss=9.0))
    records += run.records(20, start=81)
    records += [run.record(101 + t, layers={"act_frac_saturated": {"out": 0.8}}) for t in range(5)]
    records += [run.record(106 + t, grad_norm=math.exp(0.5 * 1.6**t)) for t in range(10)]
    records.append(run.record(116, loss=math.nan, grad_norm=math.nan))
    return records


def test_default_detectors_cover_the_whole_catalog_once() -> None:
    assert isinstance(DEFAULT_DETECTORS, tuple)
    assert sorted(d.name for d in DEFAULT_DETECTORS) == sorted(CATALOG)


def test_warm_then_process_gives_the_same_findings_as_processing_everything() -> None:
    run = Run(relu_mlp(4))
    records = eventful_records(run)
    everything = run_all(run, records, batch=len(records))
    for split in (20, 95, 110):
        pipeline = Pipeline(run.spec)
        pipeline.warm(records[:split])
        assert pipeline.last_step == records[split - 1]["step"]
        assert pipeline.process(records[split:]) == [f for f in everything if f.step >= split]


def test_warming_with_only_the_last_window_of_history_reproduces_the_findings() -> None:
    run = Run(relu_mlp(4))
    records = eventful_records(run)
    everything = run_all(run, records, batch=7, window=32)
    pipeline = Pipeline(run.spec, window=32)
    pipeline.warm(records[100 - 32 : 100])
    assert pipeline.process(records[100:]) == [f for f in everything if f.step >= 100]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12))
def test_findings_do_not_depend_on_how_records_are_batched(sizes: list[int]) -> None:
    run = Run(relu_mlp(3))
    records = eventful_records(run)
    expected = run_all(run, records, batch=len(records))
    pipeline = Pipeline(run.spec)
    found: list[Finding] = []
    start = 0
    for size in sizes * (len(records) // sum(sizes) + 1):
        found += pipeline.process(records[start : start + size])
        start += size
    assert found == expected


def test_findings_are_returned_in_step_order() -> None:
    run = Run(relu_mlp(4))
    findings = run_all(run, eventful_records(run), batch=200)
    assert [f.step for f in findings] == sorted(f.step for f in findings)


def test_records_with_every_optional_field_absent_are_accepted_silently() -> None:
    run = Run(relu_mlp(3))
    pipeline = Pipeline(run.spec)
    bare = [protocol.decode_record({"step": s}) for s in range(40)]
    assert pipeline.process(bare) == []
    assert pipeline.steps_to_nonfinite == math.inf
    assert pipeline.last_step == 39


def test_some_layer_fields_absent_is_fine() -> None:
    run = Run(relu_mlp(3))
    records = [run.record(s, drop=("act_std", "in_max_abs", "grad_norm", "loss")) for s in range(30)]
    assert Pipeline(run.spec).process(records) == []


def test_all_zero_statistics_raise_nothing() -> None:
    run = Run(relu_mlp(3))
    zeros = {"step": 0, "loss": 0.0, "grad_norm": 0.0, "layers": {f: [0.0] * 5 for f in protocol.LAYER_FIELDS}}
    records = [protocol.decode_record({**zeros, "step": s}, n_layers=5) for s in range(30)]
    assert Pipeline(run.spec).process(records) == []


def test_a_single_layer_run_works() -> None:
    run = Run([layer("only", activation="sigmoid", params=11)])
    assert Pipeline(run.spec).process(run.records(30)) == []
    [finding] = Pipeline(run.spec).process([run.record(0, layers={"act_frac_nonfinite": {"only": 1.0}})])
    assert finding.layer == "only"


def test_a_run_without_a_layer_table_still_watches_the_loss() -> None:
    run = Run([])
    findings = Pipeline(run.spec).process([protocol.decode_record({"step": 0, "loss": math.inf})])
    assert [(f.detector, f.layer) for f in findings] == [("nonfinite", None)]


def test_empty_batch_is_a_no_op() -> None:
    pipeline = Pipeline(Run(relu_mlp(2)).spec)
    assert pipeline.process([]) == []
    assert pipeline.last_step is None


def test_detectors_can_be_chosen() -> None:
    run = Run(relu_mlp(3))
    [nonfinite] = [d for d in DEFAULT_DETECTORS if d.name == "nonfinite"]
    pipeline = Pipeline(run.spec, detectors=(nonfinite,))
    record = run.record(0, loss=math.nan, layers={"act_frac_zero": {"dense_1": 0.99}})
    assert [f.detector for f in pipeline.process([record])] == ["nonfinite"]


def test_every_finding_says_what_where_threshold_and_remedy() -> None:
    run = Run(relu_mlp(4))
    findings = run_all(run, eventful_records(run))
    assert {f.detector for f in findings} >= {"grad_explosion", "loss_spike", "saturation", "nonfinite"}
    for finding in findings:
        assert finding.message and finding.remedy
        assert finding.severity in ("info", "warning", "critical")
        assert math.isfinite(finding.threshold)


@pytest.mark.parametrize("policy", protocol.DTYPE_POLICIES)
def test_every_dtype_policy_is_understood(policy: str) -> None:
    run = Run(relu_mlp(2), dtype_policy=policy)
    assert Pipeline(run.spec).process(run.records(25)) == []


SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 2.2250738585072014e-308 / 3, 1.7976931348623157e308]


def test_every_ieee_special_value_in_every_field_is_data_not_an_error() -> None:
    # pytest turns numpy's overflow/invalid RuntimeWarnings into errors: none may escape
    run = Run(relu_mlp(3, out="sigmoid"), dtype_policy="mixed_float16")
    n = len(run.layers)
    records = []
    for step in range(300):
        fields = {
            f: [SPECIAL[(step + i + j) % len(SPECIAL)] for j in range(n)] for i, f in enumerate(protocol.LAYER_FIELDS)
        }
        raw = {
            "step": step,
            "loss": SPECIAL[step % 7],
            "grad_norm": SPECIAL[(step + 1) % 7],
            "loss_scale": 32768.0,
            "skipped": step % 3 == 0,
            "layers": fields,
        }
        records.append(protocol.decode_record(raw, n_layers=n))
    pipeline = Pipeline(run.spec)
    findings = pipeline.process(records)
    assert {f.detector for f in findings} >= {"nonfinite"}
    assert pipeline.steps_to_nonfinite == 0.0


def test_layer_arrays_may_arrive_as_float64_arrays_instead_of_lists() -> None:
    run = Run(relu_mlp(4))
    records = eventful_records(run)
    packed = [{**r, "layers": {k: array.array("d", v) for k, v in r["layers"].items()}} for r in records]
    assert run_all(run, packed) == run_all(run, records)
