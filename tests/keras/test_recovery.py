"""NanWatchCallback(recover=True): snapshots that touch nothing, and a rollback that restores them exactly."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from nanwatch import Monitor
from nanwatch.keras import NanWatchCallback, Recovery
from tests.keras import models
from tests.keras.conftest import fit_watched
from tests.keras.recorder import Recorder

pytestmark = pytest.mark.tf
STEPS = 12  # 192 samples / 16


def _schedule() -> keras.optimizers.schedules.LearningRateSchedule:
    return keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=4, decay_rate=0.9)


def _trained(recorder: Recorder | None, **watch: Any) -> list[np.ndarray]:
    keras.backend.clear_session()
    keras.utils.set_random_seed(7)
    model = models.sequential()
    model.compile(keras.optimizers.Adam(_schedule()), "mse")
    x, y = models.data(n=16 * STEPS)
    if recorder is None:
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    else:
        fit_watched(model, x, y, recorder, batch_size=16, epochs=2, watch=watch)
    return [np.asarray(w) for w in [*model.get_weights(), *(v.numpy() for v in model.optimizer.variables)]]


def test_a_healthy_run_has_bit_identical_weights_with_and_without_recovery(recorder: Recorder) -> None:
    without = _trained(recorder)
    recovering = _trained(recorder, recover=True, snapshot_every=3)  # snapshots, a scaled schedule
    plain = _trained(None)  # no callback at all: the guard changes no number either
    for a, b, c in zip(without, recovering, plain, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()


class _Probe(keras.callbacks.Callback):
    """Runs after the callback: the weights and optimizer variables at the end of each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        variables = [*self.model.weights, *self.model.optimizer.variables]
        self.states.append([np.array(v.numpy()) for v in variables])


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_a_detector_halt_is_answered_by_a_rollback_a_lower_learning_rate_and_an_event(
    recorder: Recorder, policy: str
) -> None:
    """Mixed precision: the loss scaler's variables roll back too, and the schedule's output is scaled."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(1)
    model = models.sequential()
    model.compile(keras.optimizers.Adam(_schedule()), "mse")
    recorder.commands = [{"id": "cmd-7", "action": "halt", "reason": "grad_explosion at step 5", "source": "detector",
                          "step": 5, "at_step": 5}]  # fmt: skip
    probe = _Probe()
    x, y = models.data(n=16 * STEPS)
    watch = {"recover": True, "snapshot_every": 4, "lockstep": True}
    fitted = fit_watched(model, x, y, recorder, callbacks=[probe], batch_size=16, watch=watch)

    assert fitted.callback.halted is None
    [recovery] = fitted.callback.recoveries
    assert recovery["step"] == 5 and recovery["rolled_back_to"] == 4 and recovery["batches_skipped"] == 2
    for before, after in zip(probe.states[3], probe.states[5], strict=True):  # the state after step 3, again
        np.testing.assert_array_equal(before, after)
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # a loss scaler's counts in it
    assert int(inner.iterations.numpy()) == STEPS - 2
    lrs = [r["lr"] for r in fitted.records]  # the schedule at the optimizer's own step, times 0.5 from step 6
    assert lrs[6] == pytest.approx(0.5 * float(_schedule()(4)), rel=1e-6)
    assert lrs[4] == pytest.approx(float(_schedule()(4)), rel=1e-6)
    [event] = [e for _, batch in recorder.batches for e in batch["events"]]
    assert event["kind"] == "recovery" and event["step"] == 5
    assert event["details"] == {"command_id": "cmd-7", "recovery": 1, "rolled_back_to": 4, "batches_skipped": 2,
                                "lr": pytest.approx(recovery["lr"]), "lr_factor": 0.5}  # fmt: skip
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert isinstance(inner._learning_rate, keras.optimizers.schedules.ExponentialDecay)  # its own again


def test_an_operator_halt_is_obeyed_even_with_recovery_on(recorder: Recorder) -> None:
    recorder.commands = [{"id": "op-1", "action": "halt", "reason": "stop", "source": "operator", "step": 2,
                          "at_step": 2}]  # fmt: skip
    model = models.compiled("sequential")
    x, y = models.data(n=16 * STEPS)
    fitted = fit_watched(model, x, y, recorder, batch_size=16, watch={"recover": True, "lockstep": True})
    assert fitted.callback.halted is not None and fitted.callback.halted.source == "operator"
    assert fitted.callback.recoveries == []


@pytest.mark.parametrize("bad", [{"snapshot_every": 0}, {"lr_factor": 0.0}, {"lr_factor": 2.0}, {"max_recoveries": -1}])
def test_recovery_knobs_out_of_range_say_what_they_take(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="snapshot_every >= 1, 0 < lr_factor <= 1 and max_recoveries >= 0"):
        NanWatchCallback("http://127.0.0.1:9", run_id="knobs", recover=True, **bad)


def test_a_custom_loop_rolls_back_with_recovery_and_reports_it_through_its_monitor(recorder: Recorder) -> None:
    keras.utils.set_random_seed(2)
    model = models.sequential()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer, "mse")
    recovery = Recovery(model, every=2, factor=0.25)
    recovery.snapshot(before_step=0)
    x, y = models.data(n=16)
    kept: list[np.ndarray] = []
    with Monitor(recorder.url, run_id="loop", flush_interval=0.05) as monitor:
        for step in range(3):  # a snapshot after step 1
            with tf.GradientTape() as tape:
                loss = keras.losses.mean_squared_error(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            if recovery.due(step):
                recovery.snapshot(before_step=step + 1)
                kept = [np.array(w) for w in model.get_weights()]
        details = recovery.roll_back(step=2)  # as on a detector's halt at step 2
        monitor.report_event(2, "recovery", recovery.describe(2, details), **details)

    assert details == {"recovery": 1, "rolled_back_to": 2, "batches_skipped": 1, "lr": pytest.approx(0.025),
                       "lr_factor": 0.25}  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), kept, strict=True))
    [event] = [e for _, batch in recorder.batches for e in batch["events"]]
    assert event["kind"] == "recovery" and "rolled back to the state before step 2" in event["message"]


def test_a_model_saved_during_a_recovering_fit_loads_with_its_scaled_schedule(
    recorder: Recorder, tmp_path: Any
) -> None:
    """``ModelCheckpoint`` saves the optimizer while the scaled schedule stands in for its own."""
    model = models.sequential()
    model.compile(keras.optimizers.Adam(_schedule()), "mse")
    path = tmp_path / "during.keras"
    saving = keras.callbacks.ModelCheckpoint(str(path), save_freq=2)
    x, y = models.data(n=16 * 4)
    fit_watched(model, x, y, recorder, callbacks=[saving], batch_size=16, watch={"recover": True})
    loaded = keras.saving.load_model(path)
    step = int(loaded.optimizer.iterations.numpy())
    assert step > 0 and float(loaded.optimizer.learning_rate) == pytest.approx(float(_schedule()(step)), rel=1e-6)
