"""When NanWatchCallback stops fit, what it reports about NaN, and what it leaves behind."""

from __future__ import annotations

import logging
import math
import socket
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from nanwatch.keras import NanWatchCallback
from tests.keras import models
from tests.keras.conftest import fit_watched
from tests.keras.recorder import Recorder

pytestmark = pytest.mark.tf


class MyCustomLayer(keras.layers.Layer):
    """The seed article's layer: divides each row by its variance (no epsilon)."""

    def call(self, inputs: Any) -> Any:
        variance = keras.ops.var(inputs, axis=1)
        return inputs / variance[:, None]


def test_seed_zero_variance_layer_stops_fit_at_step_zero(recorder: Recorder) -> None:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((10,)), MyCustomLayer(name="my_custom_layer"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x = np.array([[1] * 10, list(range(1, 11)), [0] * 10], dtype="float32")
    y = np.array([[1], [2], [0]], dtype="float32")

    fitted = fit_watched(model, x, y, recorder, batch_size=1, epochs=10)

    assert [row["name"] for row in fitted.run["layers"]] == ["my_custom_layer", "dense"]
    (record,) = fitted.records  # the job stopped after the very first step
    assert record["step"] == 0 and not math.isfinite(record["loss"])
    assert record["layers"]["act_frac_nonfinite"][0] == 1.0  # [1]*10 / 0 = +Inf everywhere
    assert record["layers"]["act_max_abs"][0] == math.inf
    assert record["layers"]["in_max_abs"][0] == 1.0
    halt = fitted.callback.halted
    assert halt is not None and (halt.step, halt.source) == (0, "client")
    assert model.stop_training


@pytest.mark.parametrize("stride", [1, 10])
def test_nan_that_never_reaches_the_loss_is_reported_where_it_appears(recorder: Recorder, stride: int) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((2,)), models.HalfLog(name="half_log"), models.FirstColumn(name="first"),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(1e-2), "mse")
    x = np.abs(np.random.default_rng(0).normal(size=(32, 2))).astype("float32") + 0.1
    x[20, 1] = -1.0  # batch 2 of 4 (batch size 8) makes a NaN that the next layer drops
    y = np.zeros((32, 1), "float32")

    fitted = fit_watched(model, x, y, recorder, batch_size=8, watch={"activation_stride": stride})

    names = [row["name"] for row in fitted.run["layers"]]
    assert names[:3] == ["half_log", "first", "head"]
    nonfinite = [r["layers"]["act_frac_nonfinite"][0] for r in fitted.records]
    assert all(math.isfinite(r["loss"]) for r in fitted.records)
    weighed = [r for r in fitted.records if "weight_norm" in r["layers"]]  # detail steps
    assert weighed and all(math.isfinite(r["layers"]["weight_norm"][names.index("head")]) for r in weighed)
    assert fitted.callback.halted is None  # no loss or gradient went non-finite: the service decides
    if stride == 10:  # step 2 is a light step: the NaN shows, its share is not measured
        assert nonfinite[:2] == [0.0, 0.0] and math.isnan(nonfinite[2]) and nonfinite[3] == 0.0
        assert math.isnan(fitted.records[2]["layers"]["act_mean"][0])  # the sum of the output, as it is
        assert "act_max_abs" not in fitted.records[2]["layers"]
        return
    assert nonfinite == [0.0, 0.0, 1 / 16, 0.0]  # one value of the 8 x 2 output, at step 2 only
    with np.errstate(invalid="ignore"):
        finite_outputs = np.concatenate([x[16:24, 0], np.log(x[16:24, 1])])
    expected_max = np.nanmax(np.abs(finite_outputs))
    assert fitted.records[2]["layers"]["act_max_abs"][0] == pytest.approx(float(expected_max))  # over the finite


@pytest.mark.filterwarnings("ignore:Gradients do not exist for variables")  # the spare layer's, by design
@pytest.mark.parametrize("stride", [1, 10])
def test_a_nan_weight_is_reported_at_the_step_it_appears(recorder: Recorder, stride: int) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    used = keras.layers.Dense(1, name="used")(inputs)
    spare = keras.layers.Dense(1, name="spare")  # trainable, in the model, but feeding nothing
    spare_out = spare(inputs)
    model = keras.Model(inputs, [used, spare_out])
    model.compile(keras.optimizers.SGD(1e-2), loss=["mse", None])
    x, y = np.ones((32, 4), "float32"), np.zeros((32, 1), "float32")

    class Poison(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if batch == 2:
                spare.bias.assign([math.nan])

    watch = {"activation_stride": stride}
    fitted = fit_watched(model, x, (y, y), recorder, callbacks=[Poison()], batch_size=8, watch=watch)

    column = [row["name"] for row in fitted.run["layers"]].index("spare")
    # every step: the poisoned layer's own output shows the NaN weight at the step it appears (its share
    # measured on detail steps; NaN, "not measured", on light ones)
    shares = [r["layers"]["act_frac_nonfinite"][column] for r in fitted.records]
    np.testing.assert_equal(shares, [0.0, 0.0] + [1.0 if s % stride == 0 else math.nan for s in (2, 3)])
    weighed = [r for r in fitted.records if "weight_norm" in r["layers"]]
    weight_norms = {r["step"]: r["layers"]["weight_norm"][column] for r in weighed}
    assert sorted(weight_norms) == list(range(0, 4, stride))  # the weight norms themselves: detail steps only
    assert [math.isnan(w) for w in weight_norms.values()] == [s >= 2 for s in weight_norms]
    assert all(math.isfinite(r["loss"]) for r in fitted.records)


def test_a_service_halt_stops_fit_at_its_step_and_saves_the_model_first(recorder: Recorder, tmp_path: Path) -> None:
    recorder.commands = [{"id": "cmd-1", "action": "halt", "reason": "operator says stop", "source": "operator",
                          "step": 0, "at_step": 5}]  # fmt: skip
    model = models.compiled("sequential")
    x, y = models.data(n=16 * 400)

    class Slow(keras.callbacks.Callback):  # give the reply to the first flush time to arrive
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            time.sleep(0.002)

    path = tmp_path / "halted-{step}.keras"
    fitted = fit_watched(model, x, y, recorder, callbacks=[Slow()], batch_size=16, watch={"save_on_halt": str(path)})

    halt = fitted.callback.halted
    assert halt is not None and halt.source == "operator" and halt.command_id == "cmd-1" and halt.at_step == 5
    assert halt.step >= 5 and fitted.records[-1]["step"] == halt.step < 399
    saved = tmp_path / f"halted-{halt.step}.keras"
    assert saved.exists()
    reloaded = keras.models.load_model(saved)
    assert all(np.array_equal(a, b) for a, b in zip(reloaded.get_weights(), model.get_weights(), strict=True))
    acks = [ack for _, batch in recorder.batches for ack in batch["acks"]]
    assert acks == [{"id": "cmd-1", "step": halt.step}]


def test_model_and_optimizer_are_restored_after_fit(recorder: Recorder) -> None:
    model = models.compiled("functional")
    x, y = models.data()
    layers = model._flatten_layers(include_self=False)

    fitted = fit_watched(model, x, y, recorder, batch_size=16)

    assert fitted.records
    for obj, name in [(model.optimizer, "apply"), (model, "train_step"), (model, "compute_loss")]:
        assert name not in vars(obj), name
        assert getattr(obj, name).__func__ is getattr(type(obj), name)
    assert not any("call" in vars(layer) for layer in layers)
    sent = len(recorder.records())
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # without the callback
    assert len(history.history["loss"]) == 2 and all(math.isfinite(v) for v in history.history["loss"])
    assert len(recorder.records()) == sent


def test_fit_completes_with_one_warning_when_no_service_listens(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    model = models.compiled("sequential")
    x, y = models.data()
    callback = NanWatchCallback(url, run_id="no-service", flush_interval=0.05, timeout=0.5)

    with caplog.at_level(logging.WARNING, logger="nanwatch"):
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback])

    assert len(history.history["loss"]) == 3 and callback.halted is None
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1
    assert all("nanwatch: closed run" in r.getMessage() for r in caplog.records if r not in unreachable)


class OwnLossModel(keras.Model):
    """A custom train_step that computes its loss itself instead of through ``compute_loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(1, name="dense")

    def call(self, x: Any) -> Any:
        return self.dense(x)

    def train_step(self, data: Any) -> dict[str, Any]:
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((self(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss}


def test_a_train_step_without_compute_loss_is_said_once_and_still_watched(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    model = OwnLossModel()
    model.compile(keras.optimizers.SGD(1e-2))
    x, y = models.data()

    with caplog.at_level(logging.WARNING, logger="nanwatch"):
        fitted = fit_watched(model, x, y, recorder, batch_size=16, epochs=2)

    said = [r.getMessage() for r in caplog.records if "compute_loss" in r.getMessage()]
    assert len(said) == 1 and "batch loss is not reported" in said[0]
    assert len(fitted.records) == 8 and all("loss" not in r and r["grad_norm"] > 0 for r in fitted.records)
