"""What NanWatchCallback reports per step, checked against an independent GradientTape recomputation."""

from __future__ import annotations

import itertools
import math
from typing import Any

import keras
import numpy as np
import pytest

from tests.keras import models
from tests.keras.conftest import fit_watched
from tests.keras.recorder import Recorder

pytestmark = pytest.mark.tf

BATCH = 16
STEPS = 4  # 64 samples / 16


def _groups(model: keras.Model, names: list[str]) -> list[list[int]]:
    """Indices into ``model.trainable_variables`` of each named layer's weights."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    layers = {layer.name: layer for layer in model._flatten_layers(include_self=False)}
    return [[index[id(v)] for v in layers[name].trainable_variables] for name in names]


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_every_step_reports_the_layers_in_forward_order(kind: str, recorder: Recorder) -> None:
    model = models.compiled(kind)
    x, y = models.data()
    fitted = fit_watched(model, x, y, recorder, batch_size=BATCH, epochs=2, watch={"activation_stride": 1})

    assert [r["step"] for r in fitted.records] == list(range(2 * STEPS))
    table = fitted.run["layers"]
    assert [(row["name"], row["kind"], row["activation"]) for row in table] == [
        ("hidden", "Dense", "relu"), ("squash", "Dense", "tanh"), ("head", "Dense", "linear"),
    ]  # fmt: skip
    assert [row["params"] for row in table] == [8 * 16 + 16, 16 * 8 + 8, 8 + 1]
    assert fitted.run["framework"] == "keras"
    for record in fitted.records:
        assert set(record["layers"]) == set(keras_fields())
        assert all(len(v) == 3 and all(math.isfinite(x) for x in v) for v in record["layers"].values())
    assert fitted.callback.halted is None


def keras_fields() -> tuple[str, ...]:
    from nanwatch.protocol import LAYER_FIELDS

    return LAYER_FIELDS


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_loss_and_norms_are_each_batch_own(kind: str, jit_compile: bool, recorder: Recorder) -> None:
    model = models.compiled(kind, jit_compile=jit_compile)
    x, y = models.data()
    ref = models.reference(models.twin_of(kind, model), x, y, BATCH, STEPS)
    groups = _groups(model, ["hidden", "squash", "head"])

    fitted = fit_watched(model, x, y, recorder, batch_size=BATCH)

    keras_running_mean = fitted.history.history["loss"][-1]
    assert keras_running_mean == pytest.approx(np.mean(ref.losses), rel=1e-4)
    for step, record in enumerate(fitted.records):
        assert record["loss"] == pytest.approx(ref.losses[step], rel=1e-4)
        assert record["grad_norm"] == pytest.approx(ref.grad_norm(step), rel=1e-4)
        assert record["layers"]["grad_norm"] == pytest.approx(ref.layer_grad_norms(step, groups), rel=1e-4)
        assert record["lr"] == pytest.approx(1e-2)
    first = fitted.records[0]["layers"]
    grads, before, after = ref.grads[0], ref.before[0], ref.after[0]
    expected_mean_abs = [sum(np.abs(grads[i]).sum() for i in g) / sum(grads[i].size for i in g) for g in groups]
    expected_weight = [math.sqrt(sum((after[i] ** 2).sum() for i in g)) for g in groups]
    expected_update = [math.sqrt(sum(((after[i] - before[i]) ** 2).sum() for i in g)) for g in groups]
    assert first["grad_mean_abs"] == pytest.approx(expected_mean_abs, rel=1e-4)
    assert first["weight_norm"] == pytest.approx(expected_weight, rel=1e-4)
    assert first["update_norm"] == pytest.approx(expected_update, rel=1e-3)


def test_activation_statistics_come_from_the_training_forward_pass(recorder: Recorder) -> None:
    model = models.compiled("sequential")
    x, y = models.data()
    relu = model.get_layer("hidden")(x[:BATCH])  # the first batch, with the weights before the first step
    relu, tanh = relu.numpy(), model.get_layer("squash")(relu).numpy()

    first = fit_watched(model, x, y, recorder, batch_size=BATCH).records[0]["layers"]

    assert first["act_mean"][:2] == pytest.approx([relu.mean(), tanh.mean()], rel=1e-5)
    assert first["act_std"][:2] == pytest.approx([relu.std(), tanh.std()], rel=1e-3)
    assert first["act_max_abs"][:2] == pytest.approx([np.abs(relu).max(), np.abs(tanh).max()], rel=1e-6)
    assert first["act_frac_zero"][0] == pytest.approx((relu == 0).mean())
    assert first["in_max_abs"] == pytest.approx([np.abs(x[:BATCH]).max(), np.abs(relu).max(), np.abs(tanh).max()])
    assert first["act_frac_nonfinite"] == [0.0, 0.0, 0.0]


def test_steps_per_execution_reports_one_record_per_chunk(recorder: Recorder) -> None:
    model = models.compiled("sequential", steps_per_execution=4)
    x, y = models.data(n=128)
    ref = models.reference(models.twin_of("sequential", model), x, y, BATCH, 8)

    fitted = fit_watched(model, x, y, recorder, batch_size=BATCH)

    assert [r["step"] for r in fitted.records] == [3, 7]  # a chunk carries its last step's number
    for chunk, record in enumerate(fitted.records):
        steps = range(4 * chunk, 4 * chunk + 4)
        assert record["loss"] == pytest.approx(np.mean([ref.losses[s] for s in steps]), rel=1e-4)
        assert record["grad_norm"] == pytest.approx(max(ref.grad_norm(s) for s in steps), rel=1e-4)


@pytest.mark.parametrize(
    ("stride", "bounded", "counter"),
    [(3, True, False), (None, True, False), (None, False, False), (3, False, True), (None, False, True)],
)
def test_activation_stride_thins_out_the_detail_fields_only(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, stride: int | None, bounded: bool, counter: bool
) -> None:
    """The host picks the light or the detail train function per step; ``counter``: the in-graph step
    counter decides instead (a Keras without ``_make_function``, 3.0 to 3.6), with the same records."""
    if bounded:
        model = models.compiled("sequential")  # a tanh layer: max-abs every step for its saturation
    else:  # float32, unbounded: max-abs activations are detail fields too
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    x, y = models.data(n=16 * 24)
    if counter:
        _as_before_keras_3_7(model, monkeypatch)

    watch = {} if stride is None else {"activation_stride": stride}
    records = fit_watched(model, x, y, recorder, batch_size=BATCH, watch=watch).records

    detail = {"act_std", "act_frac_zero", "act_frac_saturated", "act_frac_zero_var", "grad_mean_abs", "update_norm",
              "weight_norm"} | (set() if bounded else {"act_max_abs", "in_max_abs"})  # fmt: skip
    assert len(records) == 24
    for record in records:
        fields = set(record["layers"])
        assert {"act_frac_nonfinite", "act_mean", "grad_norm"} <= fields
        assert fields - detail == set(keras_fields()) - detail
        assert detail <= fields or not detail & fields, record["step"]  # all of the details or none
    detailed = [r["step"] for r in records if detail <= set(r["layers"])]
    if stride is not None or counter:  # the in-graph counter keeps "auto"'s first stride, 10
        assert detailed == list(range(0, 24, stride or 10))
    else:  # "auto": the first step, every 10th until both kinds of step are timed, then every 10th-100th
        assert detailed[:2] == [0, 10]
        assert all(10 <= later - earlier <= 100 for earlier, later in itertools.pairwise(detailed))


def _as_before_keras_3_7(model: keras.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras 3.0 to 3.6 build the train function without a ``_make_function`` to build others with."""
    make = model._make_function

    def make_train_function(force: bool = False) -> Any:
        if model.train_function is None or force:
            model.train_function = make(model.train_step)
        return model.train_function

    monkeypatch.setattr(model, "make_train_function", make_train_function)
    monkeypatch.setattr(model, "_make_function", None)


def test_layers_that_only_select_values_are_not_watched_and_pass_their_source_on(recorder: Recorder) -> None:
    """Reshape, max pooling and Flatten output only values their input holds: they are left out of the
    table, and the layer after them reads the watched layer before them (its ``in_max_abs``)."""
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="wide"),
        keras.layers.Reshape((16, 1)),
        keras.layers.MaxPooling1D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip
    model.compile(optimizer="sgd", loss="mse")
    x, y = models.data()
    wide = model.get_layer("wide")(x[:BATCH]).numpy()  # the first batch, with the weights before the first step

    fitted = fit_watched(model, x, y, recorder, batch_size=BATCH, watch={"activation_stride": 1})

    assert [row["name"] for row in fitted.run["layers"]] == ["wide", "head"]
    first = fitted.records[0]["layers"]
    assert first["act_max_abs"][0] == pytest.approx(np.abs(wide).max(), rel=1e-6)
    assert first["in_max_abs"] == pytest.approx([np.abs(x[:BATCH]).max(), np.abs(wide).max()], rel=1e-6)
    assert all(r["layers"]["in_max_abs"][1] == r["layers"]["act_max_abs"][0] for r in fitted.records)


def test_mixed_float16_reports_unscaled_norms_and_the_loss_scale(recorder: Recorder) -> None:
    keras.config.set_dtype_policy("mixed_float16")
    model = models.compiled("sequential")
    x, y = models.data()
    ref = models.reference(models.twin_of("sequential", model), x, y, BATCH, 1)

    fitted = fit_watched(model, x, y, recorder, batch_size=BATCH)

    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert fitted.run["dtype_policy"] == "mixed_float16"
    assert [layer["dtype"] for layer in fitted.run["layers"]] == ["float16"] * len(fitted.run["layers"])
    assert all("act_max_abs" in r["layers"] for r in fitted.records)  # float16 headroom: every step
    first = fitted.records[0]
    assert first["loss_scale"] == 2.0**15 and first["skipped"] is False
    assert first["grad_norm"] == pytest.approx(ref.grad_norm(0), rel=2e-2)  # float16 activations
    assert all(r["skipped"] is False and math.isfinite(r["grad_norm"]) for r in fitted.records)


def test_a_loss_scaler_overflow_is_a_skipped_step_not_a_halt(recorder: Recorder) -> None:
    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(1)
    model = models.sequential()
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2), initial_scale=2.0**40), "mse")
    x, y = models.data()

    fitted = fit_watched(model, x, y, recorder, batch_size=BATCH, epochs=3)

    first = fitted.records[0]
    assert first["skipped"] is True and "grad_norm" not in first and "grad_norm" not in first["layers"]
    assert first["loss_scale"] == 2.0**40 and math.isfinite(first["loss"])
    assert fitted.records[1]["loss_scale"] == 2.0**39
    assert fitted.callback.halted is None and len(fitted.records) == 3 * STEPS


def test_run_eagerly_reports_the_same_steps(recorder: Recorder) -> None:
    model = models.compiled("functional", run_eagerly=True)
    x, y = models.data()
    ref = models.reference(models.twin_of("functional", model), x, y, BATCH, STEPS)

    records = fit_watched(model, x, y, recorder, batch_size=BATCH).records

    assert [r["loss"] for r in records] == pytest.approx(ref.losses, rel=1e-4)
    assert [r["grad_norm"] for r in records] == pytest.approx([ref.grad_norm(s) for s in range(STEPS)], rel=1e-4)


def test_a_second_fit_with_the_same_callback_continues_the_run(recorder: Recorder) -> None:
    model = models.compiled("sequential")
    x, y = models.data()
    first = fit_watched(model, x, y, recorder, batch_size=BATCH)
    callback = first.callback

    model.fit(x, y, batch_size=BATCH, verbose=0, shuffle=False, callbacks=[callback])

    steps = sorted(r["step"] for r in recorder.records(callback.monitor.run_id))
    assert steps == list(range(2 * STEPS))
    assert "apply" not in vars(model.optimizer)
