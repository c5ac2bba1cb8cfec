"""grad_explosion and loss_spike: robust z-scores after a warm-up, and the steps_to_nonfinite forecast."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nanwatch_service.detectors import Pipeline
from nanwatch_service.detectors.forecast import steps_to_limit

from .records import Run, first_step, of, relu_mlp, run_all

FLOAT32_MAX = 3.4028234663852886e38
LOG_MAX = math.log(FLOAT32_MAX)


def test_grad_norm_tripling_each_step_is_forecast_close_to_the_true_steps_to_overflow() -> None:
    run = Run(relu_mlp(3))
    pipeline = Pipeline(run.spec)
    for step in range(30):
        pipeline.process([run.record(step, grad_norm=3.0**step)])
        if step >= 3:
            true_steps = (LOG_MAX - step * math.log(3.0)) / math.log(3.0)
            assert pipeline.steps_to_nonfinite == pytest.approx(true_steps, abs=0.5)


def test_steady_growth_of_1_4x_a_step_is_forecast_once_it_has_risen_for_8_steps() -> None:
    # 1.4^4 = 3.8: never 10x within 4 steps, so only the sustained trend sees it
    run = Run(relu_mlp(3))
    pipeline = Pipeline(run.spec)
    pipeline.process(run.records(40, grad_norm=lambda s: 1e25))
    start = math.log(1e25)
    for k in range(1, 60):
        log_norm = start + k * math.log(1.4)
        if log_norm > LOG_MAX:
            break
        pipeline.process([run.record(40 + k, grad_norm=math.exp(log_norm))])
        true_steps = (LOG_MAX - log_norm) / math.log(1.4)
        if k < 8:
            assert pipeline.steps_to_nonfinite == math.inf
        else:
            assert pipeline.steps_to_nonfinite == pytest.approx(true_steps, abs=0.5)


def test_noisy_steady_growth_warns_and_turns_critical_well_before_overflow() -> None:
    run = Run(relu_mlp(4))
    run.noise = 0.05
    rng = random.Random(3)
    grad = [1e25 * math.exp(rng.gauss(0, 0.05)) for _ in range(60)]
    grad += [1e25 * 1.4**k * math.exp(rng.gauss(0, 0.05)) for k in range(1, 120)]
    overflow_at = next(t for t, g in enumerate(grad) if g > FLOAT32_MAX)
    records = [run.record(t, grad_norm=grad[t]) for t in range(overflow_at)]
    found = of(run_all(run, records, batch=5), "grad_explosion")
    warned, critical = first_step(found), first_step(found, "critical")
    assert warned is not None and warned <= overflow_at - 20
    assert critical is not None and overflow_at - 20 <= critical <= overflow_at - 3


def test_flat_grad_norm_forecasts_nothing() -> None:
    run = Run(relu_mlp(3))
    pipeline = Pipeline(run.spec)
    pipeline.process(run.records(50))
    assert pipeline.steps_to_nonfinite == math.inf


def test_double_exponential_growth_is_never_forecast_later_than_it_happens() -> None:
    # log(grad_norm) itself grows ×1.5 per step: a linear fit on the log would be far too late
    logs = np.array([0.5 * 1.5**t for t in range(20)])
    overflow_at = int(np.argmax(logs > LOG_MAX))
    steps = steps_to_limit(logs[:overflow_at], overflow_at, LOG_MAX)
    remaining = overflow_at - np.arange(overflow_at)
    forecast = np.isfinite(steps)
    assert forecast[-5:].all()
    assert (steps[forecast] <= remaining[forecast]).all()


def test_one_jump_is_not_a_trend() -> None:
    logs = np.array([0.0, 0.01, 0.02, 0.03, 9.0])
    assert steps_to_limit(logs, 5, LOG_MAX)[-1] == math.inf


def test_growth_with_setbacks_is_not_sustained() -> None:
    logs = np.array([0.0, 3.0, 0.5, 3.5, 1.0])
    assert np.isinf(steps_to_limit(logs, 5, LOG_MAX)).all()


def test_diverging_gradients_go_critical_while_still_finite() -> None:
    run = Run(relu_mlp(8))
    grad = [math.exp(min(0.4 * 1.35**t, 700.0)) for t in range(40)]  # accelerating, like an SGD blow-up
    overflow_at = next(t for t, g in enumerate(grad) if g > FLOAT32_MAX)
    records = [run.record(t, grad_norm=grad[t]) for t in range(overflow_at)]
    found = of(run_all(run, records, batch=1), "grad_explosion")
    critical = first_step(found, "critical")
    assert critical is not None and critical <= overflow_at - 3
    assert first_step(found) <= critical  # type: ignore[operator]
    first = next(f for f in found if f.severity == "critical")
    assert first.steps_to_nonfinite is not None and first.steps_to_nonfinite <= 10
    assert "clipnorm" in first.remedy


def test_gradient_spike_after_warm_up_warns_with_its_median() -> None:
    run = Run(relu_mlp(3))
    run.noise = 0.1
    records = [*run.records(60), run.record(60, grad_norm=50.0)]
    [finding] = of(run_all(run, records), "grad_explosion")
    assert (finding.step, finding.severity, finding.threshold) == (60, "warning", 6.0)
    assert "median" in finding.message


def test_no_z_verdict_during_warm_up() -> None:
    run = Run(relu_mlp(3))
    run.noise = 0.1
    records = [*run.records(10), run.record(10, grad_norm=50.0, loss=30.0)]
    findings = run_all(run, records)
    assert of(findings, "grad_explosion") == []
    assert of(findings, "loss_spike") == []


def test_learning_rate_warm_up_tripling_grad_norm_over_50_steps_is_quiet() -> None:
    run = Run(relu_mlp(4))
    run.noise = 0.15
    records = run.records(400, grad_norm=lambda s: 0.5 * 3.0 ** (min(s, 50) / 50) * math.exp(random.gauss(0, 0.15)))
    assert [f for f in run_all(run, records) if f.severity != "info"] == []


def test_loss_jumping_30_percent_at_random_is_quiet() -> None:
    run = Run(relu_mlp(4))
    rng = random.Random(1)
    records = run.records(500, loss=lambda s: 0.65 * rng.uniform(0.7, 1.3))
    assert run_all(run, records) == []


def test_long_plateau_with_a_small_wiggle_is_quiet() -> None:
    run = Run(relu_mlp(4))
    records = run.records(300) + run.records(20, start=300, loss=lambda s: 0.7 * 1.1, grad_norm=lambda s: 1.5)
    assert run_all(run, records) == []


def test_loss_spike_after_warm_up_warns() -> None:
    run = Run(relu_mlp(3))
    run.noise = 0.05
    records = [*run.records(40), run.record(40, loss=7.0)]
    [finding] = of(run_all(run, records), "loss_spike")
    assert (finding.step, finding.severity) == (40, "warning")
    assert finding.value > 6.0


def test_loss_diverging_toward_overflow_is_critical_before_it_is_infinite() -> None:
    run = Run(relu_mlp(3))
    loss = [0.7 * math.exp(min(0.6 * 1.3**t, 700.0)) for t in range(60)]
    overflow_at = next(t for t, v in enumerate(loss) if v > FLOAT32_MAX)
    records = [run.record(t, loss=loss[t]) for t in range(overflow_at)]
    critical = first_step(of(run_all(run, records, batch=3), "loss_spike"), "critical")
    assert critical is not None and critical <= overflow_at - 3


def test_forecast_uses_the_half_precision_limit_for_float16_gradients() -> None:
    run = Run(relu_mlp(3), dtype_policy="float16")
    pipeline = Pipeline(run.spec)
    pipeline.process([run.record(t, grad_norm=2.0**t) for t in range(8)])
    assert pipeline.steps_to_nonfinite == pytest.approx(math.log2(65504) - 7, abs=0.5)


def test_a_nonfinite_loss_is_forecast_as_now() -> None:
    run = Run(relu_mlp(3))
    pipeline = Pipeline(run.spec)
    pipeline.process([run.record(0, loss=math.nan)])
    assert pipeline.steps_to_nonfinite == 0.0
