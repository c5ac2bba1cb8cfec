"""The Keras callback against the real service: the loop closes on real training runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import keras
import numpy as np
import pytest
import tensorflow as tf

from nanwatch.keras import NanWatchCallback
from tests.conftest import Service, ServiceProcess, wait_until
from tests.scenarios import run_scenario

pytestmark = pytest.mark.tf


@pytest.fixture(autouse=True)
def quiet_nanwatch_log() -> Any:
    logger = logging.getLogger("nanwatch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_seed_zero_variance_layer_is_critical_at_step_zero_and_the_job_stops_itself(service: Service) -> None:
    callback = NanWatchCallback(service.url, run_id="seed-div0")
    result = run_scenario("S3", [callback])
    assert result.steps_run == 1 and callback.halted is not None and callback.halted.step == 0
    wait_until(lambda: service.client.get("/v1/runs/seed-div0/events").json()["events"], what="events")
    events = service.client.get("/v1/runs/seed-div0/events").json()["events"]
    critical = [e for e in events if e["severity"] == "critical"]
    assert critical[0]["step"] == 0 and critical[0]["layer"] == "my_custom_layer"


@pytest.mark.parametrize("loss", ["binary_crossentropy", keras.losses.BinaryCrossentropy()])
def test_a_confident_sigmoid_classifier_with_a_built_in_loss_is_warned_about_not_halted(
    service: Service, loss: Any
) -> None:
    """Its top probability comes within a few float32 steps of 1, where a hand-written log(1 - p) is about to
    break (bench S6) but Keras' cross-entropy is not: saturation warnings, no critical event, no halt."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, activation="sigmoid", name="prob")])
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss=loss)
    x = np.repeat(np.array([[-5.0], [5.0]], "float32"), 16, axis=0)
    y = (x > 0).astype("float32")
    run_id = f"confident-{type(loss).__name__}"
    callback = NanWatchCallback(service.url, run_id=run_id, lockstep=True)
    model.fit(x, y, batch_size=32, epochs=60, verbose=0, callbacks=[callback])

    assert callback.halted is None
    top = float(model.predict(x[-1:], verbose=0)[0, 0])
    assert 1.0 - top <= 10 * 2.0**-24  # within the critical margin (10 float32 steps below 1)
    events = service.client.get(f"/v1/runs/{run_id}/events").json()["events"]
    saturation = [e for e in events if e["detector"] == "saturation"]
    assert saturation and {e["severity"] for e in saturation} == {"warning"}
    assert "warning only" in saturation[-1]["message"]
    assert [e for e in events if e["severity"] == "critical"] == []


class _Poison(keras.layers.Layer):
    """Adds NaN to the rows whose flag input exceeds 100 (a kernel going bad on some inputs)."""

    def call(self, x: Any, flag: Any) -> Any:
        return tf.where(flag > 100.0, tf.constant(float("nan"), x.dtype), x)


class _Swallow(keras.layers.Layer):
    """Replaces non-finite values by zero, so that nothing non-finite reaches the loss."""

    def call(self, x: Any) -> Any:
        return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))


def test_nan_that_never_reaches_the_loss_is_caught_at_its_step_naming_the_layer(service: Service) -> None:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, name="dense_in")(inputs)
    poisoned = _Poison(name="poison")(hidden, inputs[:, :1])
    outputs = keras.layers.Dense(1, name="head")(_Swallow(name="swallow")(poisoned))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.random.default_rng(0).normal(size=(256, 8)), np.zeros((256, 1))
    x[5 * 16 + 3, 0] = 1000.0  # one row of batch 5 trips the poison
    callback = NanWatchCallback(service.url, run_id="swallowed", lockstep=True)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    assert np.isfinite(history.history["loss"]).all()  # TerminateOnNaN would have seen nothing
    assert callback.halted is not None and callback.halted.step == 5
    events = service.client.get("/v1/runs/swallowed/events", params={"severity": "critical"}).json()["events"]
    assert events[0]["step"] == 5 and events[0]["layer"] == "poison" and events[0]["detector"] == "nonfinite"


class _Outage(keras.callbacks.Callback):
    """Kills the service at one step; at a later one restarts it and waits until the backlog arrives."""

    def __init__(self, service: ServiceProcess, kill_at: int, back_at: int) -> None:
        super().__init__()
        self.service, self.kill_at, self.back_at = service, kill_at, back_at

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if batch == self.kill_at:
            self.service.kill()
        if batch == self.back_at:
            self.service.start()
            wait_until(self._backlog_arrived, timeout=60, what="records written during the outage")

    def _backlog_arrived(self) -> bool:
        steps = httpx.get(f"{self.service.url}/v1/runs/outage/steps", params={"fields": "step"}).json()["steps"]
        return any(self.kill_at < row["step"] < self.back_at for row in steps)


def test_training_carries_on_through_a_service_outage_and_the_backlog_arrives_up_to_the_bound(
    tmp_path: Path,
) -> None:
    service = ServiceProcess(tmp_path / "outage.db").start()
    try:
        keras.utils.set_random_seed(2)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        x, y = np.random.default_rng(1).normal(size=(600 * 4, 4)), np.zeros((600 * 4, 1))
        callback = NanWatchCallback(service.url, run_id="outage", buffer_size=100, flush_interval=0.05, timeout=2.0)
        outage = _Outage(service, kill_at=50, back_at=450)
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback, outage])
        assert len(history.history["loss"]) == 1
        with httpx.Client(base_url=service.url, timeout=30) as client:
            rows = client.get("/v1/runs/outage/steps", params={"limit": 10_000, "fields": "loss"}).json()["steps"]
            view = client.get("/v1/runs/outage").json()
        steps = [r["step"] for r in rows]
        assert steps == sorted(steps) and steps[-1] == 599 and view["status"] == "finished"
        assert any(50 < s < 450 for s in steps)  # written during the outage, delivered after it
        assert len(set(steps)) == len(steps)  # a re-sent batch is stored once
        # Every record missing from the store was counted as dropped. The count may also hold records the
        # service committed just before it was killed (their reply was lost, the client requeued them and
        # the full buffer then dropped them), so it is an upper bound, not an equality.
        assert view["dropped"] > 0 and 600 - len(steps) <= view["dropped"] <= 600 - 50
        assert callback.monitor.dropped == view["dropped"]
    finally:
        service.stop()
