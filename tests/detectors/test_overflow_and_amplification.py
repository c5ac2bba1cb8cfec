"""overflow_headroom (per dtype) and amplification (a layer's output/input gain)."""

from __future__ import annotations

import math

from nanwatch_service.detectors import Pipeline

from .records import Run, first_step, layer, of, relu_mlp, run_all


def test_mixed_float16_activation_within_100x_of_65504_warns_and_names_the_layer() -> None:
    run = Run(relu_mlp(3), dtype_policy="mixed_float16")
    record = run.record(0, layers={"act_max_abs": {"dense_2": 1000.0}})
    [finding] = of(Pipeline(run.spec).process([record]), "overflow_headroom")
    assert (finding.severity, finding.layer) == ("warning", "dense_2")
    assert finding.value == 65504.0 / 1000.0
    assert "float16" in finding.message and "65504" in finding.message.replace(",", "").replace("6.55e+04", "65504")
    assert "float32" in finding.remedy


def test_a_layers_own_dtype_sets_its_limit_under_a_mixed_policy() -> None:
    # Without dtypes the last layer is taken to compute in float32 (Keras' advice); a table that says
    # otherwise is believed, both ways.
    declared = relu_mlp(3)
    declared[-1]["dtype"] = "float16"  # the output layer left in float16: 1000 is near its limit
    declared[2]["dtype"] = "float32"  # dense_1 computed in float32: 40000 is nowhere near it
    for layers, expected in ((relu_mlp(3), {"dense_1", "dense_2"}), (declared, {"dense_2", "out"})):
        run = Run(layers, dtype_policy="mixed_float16")
        record = run.record(0, layers={"act_max_abs": {"dense_1": 40000.0, "dense_2": 1000.0, "out": 1000.0}})
        found = of(Pipeline(run.spec).process([record]), "overflow_headroom")
        assert {f.layer for f in found} == expected


def test_activation_just_inside_the_float16_headroom_is_quiet() -> None:
    run = Run(relu_mlp(3), dtype_policy="mixed_float16")
    record = run.record(0, layers={"act_max_abs": {"dense_2": 600.0}})
    assert of(Pipeline(run.spec).process([record]), "overflow_headroom") == []


def test_activation_within_2x_of_the_float16_limit_is_critical() -> None:
    run = Run(relu_mlp(3), dtype_policy="float16")
    record = run.record(0, layers={"act_max_abs": {"dense_1": 40000.0}})
    [finding] = of(Pipeline(run.spec).process([record]), "overflow_headroom")
    assert finding.severity == "critical"


def test_the_same_activation_is_fine_in_float32_and_bfloat16() -> None:
    for policy in ("float32", "bfloat16", "mixed_bfloat16"):
        run = Run(relu_mlp(3), dtype_policy=policy)
        record = run.record(0, layers={"act_max_abs": {"dense_1": 40000.0}})
        assert of(Pipeline(run.spec).process([record]), "overflow_headroom") == []


def test_float32_activation_near_3_4e38_warns() -> None:
    run = Run(relu_mlp(3))
    record = run.record(0, layers={"act_max_abs": {"dense_1": 1e37}})
    [finding] = of(Pipeline(run.spec).process([record]), "overflow_headroom")
    assert finding.severity == "warning"


def test_float16_activations_climbing_to_65504_warn_3_steps_ahead_and_go_critical_before_inf() -> None:
    run = Run(relu_mlp(4), dtype_policy="mixed_float16")
    values = [4.0 * 2.2**t for t in range(20)]
    overflow_at = next(t for t, v in enumerate(values) if v > 65504.0)
    records = [run.record(t, layers={"act_max_abs": {"dense_3": values[t]}}) for t in range(overflow_at)]
    found = of(run_all(run, records, batch=4), "overflow_headroom")
    assert first_step(found, "warning", "critical") <= overflow_at - 3  # type: ignore[operator]
    critical = first_step(found, "critical")
    assert critical is not None and critical < overflow_at
    assert {f.layer for f in found} == {"dense_3"}


def test_float16_gradient_norm_near_its_limit_warns_without_a_layer() -> None:
    run = Run(relu_mlp(3), dtype_policy="float16")
    found = of(Pipeline(run.spec).process([run.record(0, grad_norm=5000.0)]), "overflow_headroom")
    assert [(f.layer, f.severity) for f in found] == [(None, "warning")]


def test_mixed_float16_gradients_have_float32_headroom() -> None:
    run = Run(relu_mlp(3), dtype_policy="mixed_float16")
    assert of(Pipeline(run.spec).process([run.record(0, grad_norm=5000.0)]), "overflow_headroom") == []


def test_dividing_by_a_tiny_variance_is_amplification_with_a_larger_epsilon_remedy() -> None:
    run = Run([layer("my_custom_layer", kind="MyCustomLayer", params=0), layer("dense", params=11)])
    record = run.record(
        0, loss=5e11, layers={"in_max_abs": {"my_custom_layer": 1.0}, "act_max_abs": {"my_custom_layer": 1e7}}
    )
    [finding] = of(Pipeline(run.spec).process([record]), "amplification")
    assert (finding.severity, finding.layer, finding.value) == ("warning", "my_custom_layer", 1e7)
    assert "epsilon" in finding.remedy


def test_normalizing_tiny_inputs_to_order_one_is_not_amplification() -> None:
    run = Run([layer("bn", kind="BatchNormalization", params=4), layer("dense", params=11)])
    record = run.record(0, layers={"in_max_abs": {"bn": 1e-6}, "act_max_abs": {"bn": 3.0}})
    assert of(Pipeline(run.spec).process([record]), "amplification") == []


def test_all_zero_input_gives_no_gain() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"in_max_abs": {"dense_0": 0.0}, "act_max_abs": {"dense_0": 500.0}})
    assert of(Pipeline(run.spec).process([record]), "amplification") == []


def test_infinite_output_is_nonfinite_not_amplification() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"act_max_abs": {"dense_0": math.inf}})
    findings = Pipeline(run.spec).process([record])
    assert of(findings, "amplification") == []
    assert len(of(findings, "nonfinite")) == 1
