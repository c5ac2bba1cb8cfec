"""nonfinite: every NaN/Inf is critical and traced to the layer where it was born."""

from __future__ import annotations

import math

import pytest

from nanwatch_service.detectors import Pipeline

from .records import Run, layer, of, relu_mlp

NAN, INF = math.nan, math.inf


def seed_custom_layer_run() -> Run:
    """The seed article's model: a custom layer dividing by the row variance, then a Dense."""
    return Run([layer("my_custom_layer", kind="MyCustomLayer", params=0), layer("dense", params=11)])


def test_zero_variance_layer_is_named_with_epsilon_remedy() -> None:
    run = seed_custom_layer_run()
    record = run.record(
        0,
        loss=NAN,
        grad_norm=NAN,
        layers={
            "act_max_abs": {"my_custom_layer": INF, "dense": INF},
            "act_frac_nonfinite": {"my_custom_layer": 2 / 3, "dense": 2 / 3},
            "grad_norm": {"dense": NAN},
        },
    )
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.severity == "critical"
    assert finding.step == 0
    assert finding.layer == "my_custom_layer"
    assert "my_custom_layer" in finding.message
    assert "add an epsilon to the denominator" in finding.remedy


def test_first_offending_layer_in_forward_order_is_named() -> None:
    run = Run(relu_mlp(4))
    record = run.record(3, layers={"act_frac_nonfinite": {"dense_2": 0.1, "dense_3": 1.0, "out": 1.0}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer == "dense_2"
    assert "3 layer(s) affected" in finding.message


def test_nan_activation_that_never_reaches_the_loss_is_caught_at_its_step() -> None:
    run = Run(relu_mlp(4))
    records = [*run.records(5), run.record(5, layers={"act_frac_nonfinite": {"dense_1": 0.01}})]
    [finding] = of(Pipeline(run.spec).process(records), "nonfinite")
    assert (finding.step, finding.layer, finding.severity) == (5, "dense_1", "critical")


@pytest.mark.parametrize(("mean", "kind"), [(NAN, "NaN"), (INF, "Inf"), (-INF, "Inf")])
def test_a_light_step_share_not_measured_still_names_the_layer_and_the_kind(mean: float, kind: str) -> None:
    """A client's light step sends act_frac_nonfinite NaN (non-finite entries, share not measured), no
    act_max_abs, and the output's mean as its sum made it."""
    run = Run(relu_mlp(4))
    layers = {"act_frac_nonfinite": {"dense_1": NAN, "dense_2": NAN}, "act_mean": {"dense_1": mean, "dense_2": NAN}}
    records = [*run.records(5), run.record(5, layers=layers, drop=("act_max_abs", "in_max_abs"))]
    [finding] = of(Pipeline(run.spec).process(records), "nonfinite")
    assert (finding.step, finding.layer, finding.severity) == (5, "dense_1", "critical")
    assert f"({kind} from finite inputs)" in finding.message


def test_nan_weights_with_a_finite_loss_are_caught() -> None:
    run = Run(relu_mlp(3))
    record = run.record(0, layers={"weight_norm": {"dense_2": NAN}, "update_norm": {"dense_2": NAN}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer == "dense_2"
    assert "weights" in finding.message
    assert "checkpoint" in finding.remedy


def test_nonfinite_input_data_is_blamed_on_the_dataset() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"in_max_abs": {"dense_0": NAN}, "act_frac_nonfinite": {"dense_0": 1.0}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer == "dense_0"
    assert "dataset" in finding.remedy


def test_overflow_in_a_builtin_layer_suggests_lower_learning_rate_not_epsilon() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, layers={"act_max_abs": {"dense_1": INF}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer == "dense_1"
    assert "learning rate" in finding.remedy
    assert "epsilon" not in finding.remedy


def test_gradients_turning_nonfinite_name_the_deepest_layer() -> None:
    run = Run(relu_mlp(4))
    bad = {"dense_0": INF, "dense_1": INF, "dense_2": INF}  # backprop runs from the output down
    record = run.record(0, grad_norm=INF, layers={"grad_norm": bad})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer == "dense_2"
    assert "gradients" in finding.message


def test_loss_from_a_probability_that_rounded_to_one_suggests_from_logits() -> None:
    run = Run(relu_mlp(2))
    record = run.record(0, loss=INF, layers={"act_max_abs": {"out": 1.0}, "act_frac_saturated": {"out": 0.03}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer is None
    assert "from_logits=True" in finding.remedy


def test_overflowing_squared_error_is_called_an_overflow() -> None:
    run = Run(relu_mlp(2, out=None))
    record = run.record(0, loss=INF, layers={"act_max_abs": {"out": 3e21}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert "overflowed" in finding.remedy


def test_skipped_step_under_the_loss_scaler_is_not_critical() -> None:
    run = Run(relu_mlp(3), dtype_policy="mixed_float16")
    record = run.record(0, grad_norm=INF, loss_scale=32768.0, skipped=True, layers={"grad_norm": {"dense_1": INF}})
    assert of(Pipeline(run.spec).process([record]), "nonfinite") == []


def test_inf_gradients_without_a_loss_scaler_are_critical() -> None:
    run = Run(relu_mlp(3), dtype_policy="mixed_float16")
    record = run.record(0, grad_norm=INF, skipped=True, layers={"grad_norm": {"dense_1": INF}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.severity == "critical"


def test_a_guard_skip_names_the_layer_and_says_the_weights_are_unchanged() -> None:
    """The Keras callback's guard skipped an update whose gradients were not finite (no loss scaler)."""
    run = Run(relu_mlp(3))
    records = [*run.records(3), run.record(3, grad_norm=NAN, skipped=True, layers={"grad_norm": {"dense_1": NAN}})]
    [finding] = of(Pipeline(run.spec).process(records), "nonfinite")
    assert (finding.step, finding.layer, finding.severity) == (3, "dense_1", "critical")
    assert "the update was skipped, the weights are unchanged" in finding.message


def test_a_guard_skip_is_critical_even_when_every_value_sent_is_finite() -> None:
    """A non-finite learning rate from a schedule: the guard skipped the step, nothing else shows it."""
    run = Run(relu_mlp(3))
    [finding] = of(Pipeline(run.spec).process([run.record(0, lr=NAN, skipped=True)]), "nonfinite")
    assert finding.severity == "critical" and finding.layer is None
    assert "the update was skipped" in finding.message


def test_an_applied_step_that_says_skipped_false_stays_quiet() -> None:
    run = Run(relu_mlp(3))
    assert of(Pipeline(run.spec).process([run.record(0, skipped=False)]), "nonfinite") == []


def test_forward_overflow_is_critical_even_on_a_skipped_step() -> None:
    run = Run(relu_mlp(3), dtype_policy="mixed_float16")
    record = run.record(0, loss=INF, loss_scale=1.0, skipped=True, layers={"act_max_abs": {"dense_2": INF}})
    [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
    assert finding.layer == "dense_2"


def test_the_overflow_remedy_names_the_dtype_the_layer_computes_in() -> None:
    layers = relu_mlp(3)
    layers[2]["dtype"] = "float32"  # dense_1 computes in float32 under the mixed policy
    run = Run(layers, dtype_policy="mixed_float16")
    for name, dtype in (("dense_1", "float32"), ("dense_2", "float16")):
        record = run.record(0, loss=INF, layers={"act_max_abs": {name: INF}})
        [finding] = of(Pipeline(run.spec).process([record]), "nonfinite")
        assert finding.layer == name and f"overflowed {dtype}" in finding.remedy, finding.remedy


def test_gradient_arrays_of_layers_without_weights_are_ignored() -> None:
    run = Run(relu_mlp(3))
    record = run.record(0, layers={f: {"dropout": NAN} for f in ("grad_norm", "grad_mean_abs", "weight_norm")})
    assert Pipeline(run.spec).process([record]) == []


def test_nan_among_finite_values_is_found_in_every_record_of_a_batch() -> None:
    run = Run(relu_mlp(3))
    records = [run.record(s, layers={"act_frac_nonfinite": {"out": 0.5}} if s % 3 == 0 else None) for s in range(9)]
    found = of(Pipeline(run.spec).process(records), "nonfinite")
    assert [f.step for f in found] == [0, 3, 6]
    assert {f.layer for f in found} == {"out"}
