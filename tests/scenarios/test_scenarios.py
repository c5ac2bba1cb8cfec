"""Each scenario, run unmonitored, does what its docstring says, step for step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the scenarios train real Keras models: pip install nanwatch[keras]")

import keras

from tests.scenarios import SCENARIOS, ScenarioResult, run_scenario
from tests.scenarios._run import run

pytestmark = pytest.mark.tf

DIVERGING = [name for name, s in SCENARIOS.items() if s.diverges]
HEALTHY = [name for name, s in SCENARIOS.items() if not s.diverges]


def _mse(y: np.ndarray, p: np.ndarray) -> Any:
    return np.mean((p - y) ** 2)


# The loss each probed scenario is compiled with, written again in numpy (float64) from its definition.
NUMPY_LOSSES: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
    "S5": _mse,
    "S6": lambda y, p: np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))),
    "S7": lambda y, p: np.mean(np.abs(p - y)),
    "S8a": _mse,
}


class BatchLossProbe(keras.callbacks.Callback):
    """Test-only and read-only: each batch's loss from a separate forward pass just before its step, and
    again from Keras' running epoch mean, `loss_k = (N_k·m_k − N_{k−1}·m_{k−1}) / n_k` with N_k the samples
    seen this epoch after batch k (Keras 3 weights the mean by batch size)."""

    def __init__(self, fit_kwargs: dict[str, Any], numpy_loss: Callable[[np.ndarray, np.ndarray], Any]) -> None:
        super().__init__()
        x, y, size = fit_kwargs["x"], fit_kwargs["y"], fit_kwargs["batch_size"]
        self.batches = [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]
        self.numpy_loss = numpy_loss
        self.forward: list[float] = []
        self.from_running_mean: list[float] = []
        self._seen, self._total = 0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._seen, self._total = 0, 0.0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        x, y = self.batches[batch]
        prediction = keras.ops.convert_to_numpy(self.model(x, training=True)).astype(np.float64)
        with np.errstate(all="ignore"):  # log(0) and inf - inf are the point of S6 and S7
            self.forward.append(float(self.numpy_loss(y.astype(np.float64), prediction)))

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        size = len(self.batches[batch][0])
        total = float((logs or {})["loss"]) * (self._seen + size)
        self.from_running_mean.append((total - self._total) / size)
        self._seen, self._total = self._seen + size, total


@pytest.fixture(scope="module")
def recorded() -> Callable[[str], tuple[ScenarioResult, BatchLossProbe | None]]:
    """Each scenario's unmonitored run, once per module (a probe rides along where it is read-only)."""
    cache: dict[str, tuple[ScenarioResult, BatchLossProbe | None]] = {}

    def get(name: str) -> tuple[ScenarioResult, BatchLossProbe | None]:
        if name not in cache:
            probe = None
            if name in NUMPY_LOSSES:
                probe = BatchLossProbe(SCENARIOS[name].build()[1], NUMPY_LOSSES[name])
            cache[name] = (run_scenario(name, [probe] if probe else None), probe)
        return cache[name]

    return get


@pytest.mark.parametrize("name", DIVERGING)
def test_diverging_scenario_first_goes_nonfinite_at_its_recorded_step(recorded: Any, name: str) -> None:
    result, _ = recorded(name)
    first = SCENARIOS[name].expected_first_nonfinite
    assert first is not None
    assert result.first_nonfinite == first
    assert all(math.isfinite(loss) for loss in result.losses[:first])
    assert result.steps_run == SCENARIOS[name].max_steps > first


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scenario_stays_finite_to_the_end(recorded: Any, name: str) -> None:
    result, _ = recorded(name)
    assert result.first_nonfinite is None
    assert result.weights_finite_at_end
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.steps_run == SCENARIOS[name].max_steps


@pytest.mark.parametrize("name", ["S3", "S5", "S6"])
def test_float32_divergence_leaves_nonfinite_weights(recorded: Any, name: str) -> None:
    result, _ = recorded(name)
    assert not result.weights_finite_at_end


def test_s4_epsilon_keeps_the_loss_finite_but_huge(recorded: Any) -> None:
    result, _ = recorded("S4")
    assert max(result.losses) > 1e11
    assert min(result.losses) < 10  # the non-constant rows are fitted normally


def test_s4_custom_layer_amplifies_a_constant_row_ten_million_times() -> None:
    model, fit_kwargs = SCENARIOS["S4"].build()
    constant_row = fit_kwargs["x"][:1]
    output = keras.ops.convert_to_numpy(model.get_layer("my_custom_layer")(constant_row))
    assert type(model.get_layer("my_custom_layer")).__name__ == "MyCustomLayer"
    np.testing.assert_allclose(np.abs(output).max() / np.abs(constant_row).max(), 1e7, rtol=1e-3)


def test_s5_gradient_precursor_leaves_the_loss_flat_until_the_cliff(recorded: Any) -> None:
    losses = recorded("S5")[0].losses
    assert max(losses[:11]) < 300  # flat while the gradient norm climbs
    assert losses[13] > 1e4 and losses[14] > 1e30 and math.isnan(losses[15])


def test_s7_loss_is_inf_while_the_loss_scaler_keeps_weights_finite(recorded: Any) -> None:
    result, _ = recorded("S7")
    first = SCENARIOS["S7"].expected_first_nonfinite
    assert first is not None and math.isinf(result.losses[first])
    assert result.weights_finite_at_end
    assert keras.config.dtype_policy().name == "float32"


def test_s7_builds_float16_hidden_layers_a_float32_output_and_a_loss_scaler() -> None:
    model, _ = SCENARIOS["S7"].build()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert [layer.compute_dtype for layer in model.layers] == ["float16", "float16", "float32"]
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("name", list(NUMPY_LOSSES))
def test_batch_loss_is_the_loss_of_that_batch_alone(recorded: Any, name: str) -> None:
    result, probe = recorded(name)
    logged, forward = np.array(result.losses), np.array(probe.forward)
    finite = np.isfinite(logged)
    np.testing.assert_array_equal(np.isfinite(forward), finite)
    np.testing.assert_allclose(logged[finite], forward[finite], rtol=1e-4)
    # Keras' running mean tells the same story until it turns into inf - inf at the first bad batch.
    clean = result.first_nonfinite or len(logged)
    np.testing.assert_allclose(probe.from_running_mean[:clean], logged[:clean], rtol=1e-3, atol=1e-3)


def test_rerun_repeats_every_loss_bit_for_bit_and_callbacks_can_stop_it(recorded: Any) -> None:
    class StopAfter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if batch == 5:
                self.model.stop_training = True

    rerun = run_scenario("S5", callbacks=[StopAfter()])
    assert rerun.steps_run == 6
    assert rerun.losses == recorded("S5")[0].losses[:6]


def test_terminate_on_nan_stops_s3_only_after_the_weights_are_nan() -> None:
    result = run_scenario("S3", callbacks=[keras.callbacks.TerminateOnNaN()])
    assert result.steps_run == 1
    assert not result.weights_finite_at_end


def test_global_dtype_policy_is_restored_when_a_build_fails() -> None:
    def broken_build() -> Any:
        keras.config.set_dtype_policy("mixed_float16")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        run(replace(SCENARIOS["S7"], build=broken_build))
    assert keras.config.dtype_policy().name == "float32"


def test_unknown_scenario_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="S1, S2"):
        run_scenario("S9")


def test_every_diverging_scenario_says_where_and_healthy_ones_do_not() -> None:
    for scenario in SCENARIOS.values():
        assert (scenario.expected_first_nonfinite is not None) == scenario.diverges, scenario.name
        assert scenario.dtype_policy in ("float32", "mixed_float16")
    assert DIVERGING == ["S3", "S5", "S6", "S7"]
