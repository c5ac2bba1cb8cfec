"""zero_variance, saturation and dead_relu: the shape of a layer's activations."""

from __future__ import annotations

import pytest

from nanwatch_service.detectors import Pipeline

from .records import Run, layer, of, relu_mlp, run_all

FLOAT32_ULP_BELOW_1 = 2.0**-24


def custom_run() -> Run:
    return Run([layer("dense_in", params=110), layer("my_norm", kind="MyNorm", params=0), layer("dense", params=11)])


def test_constant_rows_leaving_a_custom_layer_warn_with_an_epsilon_remedy() -> None:
    run = custom_run()
    record = run.record(0, layers={"act_frac_zero_var": {"my_norm": 0.25}})
    [finding] = of(Pipeline(run.spec).process([record]), "zero_variance")
    assert (finding.severity, finding.layer, finding.value) == ("warning", "my_norm", 0.25)
    assert "epsilon" in finding.remedy


def test_all_zero_rows_after_a_relu_are_left_to_dead_relu() -> None:
    run = Run(relu_mlp(3))
    record = run.record(0, layers={"act_frac_zero_var": {"dense_1": 0.2, "dropout": 0.2}})
    assert of(Pipeline(run.spec).process([record]), "zero_variance") == []


def test_a_one_unit_layer_whose_every_row_is_constant_is_quiet() -> None:
    run = custom_run()
    record = run.record(0, layers={"act_frac_zero_var": {"dense": 1.0}})
    assert of(Pipeline(run.spec).process([record]), "zero_variance") == []


def test_a_layer_that_collapses_to_a_constant_after_varying_warns() -> None:
    run = custom_run()
    records = [*run.records(5), run.record(5, layers={"act_std": {"my_norm": 0.0}})]
    [finding] = of(Pipeline(run.spec).process(records), "zero_variance")
    assert (finding.step, finding.layer) == (5, "my_norm")
    assert "constant" in finding.message


def test_a_layer_that_never_varied_is_not_called_collapsed() -> None:
    run = custom_run()
    records = [run.record(s, layers={"act_std": {"my_norm": 0.0}}) for s in range(5)]
    assert of(Pipeline(run.spec).process(records), "zero_variance") == []


def test_mostly_saturated_tanh_warns() -> None:
    run = Run([layer("rnn", kind="SimpleRNN", activation="tanh"), layer("out", params=11)])
    record = run.record(0, layers={"act_frac_saturated": {"rnn": 0.6}})
    [finding] = of(Pipeline(run.spec).process([record]), "saturation")
    assert (finding.severity, finding.layer) == ("warning", "rnn")
    assert "60.0%" in finding.message


def test_saturation_fraction_of_an_unbounded_layer_is_ignored() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"act_frac_saturated": {"dense_0": 0.9}})
    assert of(Pipeline(run.spec).process([record]), "saturation") == []


def test_sigmoid_output_within_100_float32_steps_of_one_warns_with_from_logits() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"act_max_abs": {"out": 1.0 - 30 * FLOAT32_ULP_BELOW_1}})
    [finding] = of(Pipeline(run.spec).process([record]), "saturation")
    assert finding.severity == "warning"
    assert "from_logits=True" in finding.remedy
    assert "-inf" in finding.message


def test_sigmoid_output_within_10_float32_steps_of_one_is_critical() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"act_max_abs": {"out": 1.0 - 3 * FLOAT32_ULP_BELOW_1}})
    [finding] = of(Pipeline(run.spec).process([record]), "saturation")
    assert finding.severity == "critical"


def test_a_sigmoid_near_one_on_a_step_without_detail_fields_names_the_margin_not_a_nan_fraction() -> None:
    run = Run(relu_mlp(2))
    details = ("act_frac_saturated", "act_frac_zero", "act_std", "act_frac_zero_var")  # a strided-out step
    record = run.record(0, layers={"act_max_abs": {"out": 1.0 - 3 * FLOAT32_ULP_BELOW_1}}, drop=details)
    [finding] = of(Pipeline(run.spec).process([record]), "saturation")
    assert finding.severity == "critical"
    assert "nan" not in finding.message.lower() and "of the outputs" not in finding.message
    assert finding.value == 3 * FLOAT32_ULP_BELOW_1 and finding.threshold > finding.value


def test_an_ordinary_confident_prediction_in_bfloat16_is_not_near_one() -> None:
    run = Run(relu_mlp(2), dtype_policy="bfloat16")
    record = run.record(0, layers={"act_max_abs": {"out": 0.99}})
    assert of(Pipeline(run.spec).process([record]), "saturation") == []


def test_mostly_saturated_sigmoid_at_the_last_value_below_one_is_critical() -> None:
    run = Run(relu_mlp(2))
    pinned = {"act_max_abs": {"out": 1.0 - FLOAT32_ULP_BELOW_1}, "act_frac_saturated": {"out": 0.7}}
    [finding] = of(Pipeline(run.spec).process([run.record(0, layers=pinned)]), "saturation")
    assert finding.severity == "critical"


@pytest.mark.parametrize("stable_loss", [False, True])
def test_saturating_sigmoid_warns_3_steps_before_rounding_to_one_and_is_critical_before(stable_loss: bool) -> None:
    run = Run(relu_mlp(2), stable_loss=stable_loss)
    margins = [10.0 ** -(2 + s / 2) for s in range(20)]  # logits growing steadily
    rounds_at = next(s for s, m in enumerate(margins) if m < FLOAT32_ULP_BELOW_1 / 2)  # p becomes exactly 1.0
    records = [
        run.record(s, layers={"act_frac_saturated": {"out": 0.05 * s}, "act_max_abs": {"out": 1.0 - margins[s]}})
        for s in range(rounds_at)
    ]
    found = of(run_all(run, records), "saturation")
    assert min(f.step for f in found) <= rounds_at - 3
    critical = [f for f in found if f.severity == "critical"]
    if stable_loss:  # a built-in cross-entropy clips p: slow learning ahead, not a NaN
        assert critical == [] and all("warning only" in f.message for f in found if "top probability" in f.message)
    else:
        assert min(f.step for f in critical) < rounds_at


def test_a_confident_softmax_is_not_saturation() -> None:
    run = Run([*relu_mlp(2, out=None), layer("softmax", kind="Softmax", params=0)])
    record = run.record(0, layers={"act_max_abs": {"softmax": 1.0 - 1e-8}, "act_frac_saturated": {"softmax": 0.4}})
    assert of(Pipeline(run.spec).process([record]), "saturation") == []


def test_softmax_probabilities_that_underflow_to_exactly_zero_warn() -> None:
    run = Run([*relu_mlp(2, out=None), layer("softmax", kind="Softmax", params=0)])
    record = run.record(0, layers={"act_frac_zero": {"softmax": 0.1}, "act_frac_saturated": {"softmax": 0.3}})
    [finding] = of(Pipeline(run.spec).process([record]), "saturation")
    assert "exactly 0" in finding.message


def test_mostly_dead_relu_layer_is_info() -> None:
    run = Run(relu_mlp(3))
    record = run.record(0, layers={"act_frac_zero": {"dense_2": 0.97}})
    [finding] = of(Pipeline(run.spec).process([record]), "dead_relu")
    assert (finding.severity, finding.layer) == ("info", "dense_2")
    assert "LeakyReLU" in finding.remedy


def test_half_zero_relu_layer_at_initialization_is_normal() -> None:
    run = Run(relu_mlp(3))
    assert of(Pipeline(run.spec).process(run.records(10)), "dead_relu") == []


def test_zeros_after_a_non_relu_layer_are_not_dead_relu() -> None:
    run = custom_run()
    record = run.record(0, layers={"act_frac_zero": {"dense_in": 0.99}})
    assert of(Pipeline(run.spec).process([record]), "dead_relu") == []
