"""A light step's raw vector, finished on the host, reports what the device-finished step vector reported.

Each case trains the same model twice from the same seed, once as shipped (light steps return their raw
reductions, ``nanwatch.keras._raw`` finishes them on the monitor's thread) and once with the device
finishing every step (``Instrumentation.finish_on_host = False``, the path detail steps still take), and
compares every record field by field: the same numbers, the same fields left out, NaN where NaN.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest

from nanwatch.keras._instrument import Instrumentation
from tests.keras import models
from tests.keras.conftest import fit_watched
from tests.keras.recorder import Recorder

pytestmark = pytest.mark.tf


def _relu_mlp() -> keras.Model:  # float32, no bounded activation: max and min only on detail steps
    return keras.Sequential([
        keras.Input((models.FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="first"),
        keras.layers.Dense(16, activation="relu", name="second"),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip


def _branches() -> keras.Model:  # a layer reading two watched outputs (in_max_abs from both), an unwatched weight
    inputs = keras.Input((models.FEATURES,))
    left = keras.layers.Dense(8, activation="tanh", name="left")(inputs)
    right = keras.layers.Dense(8, activation="relu", name="right")(inputs)
    joined = keras.layers.Concatenate(name="joined")([left, right])
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(joined))


def _half_log() -> keras.Model:  # step 2 makes a NaN in half_log's output that the next layer drops
    return keras.Sequential([
        keras.Input((2,)), models.HalfLog(name="half_log"), models.FirstColumn(name="first"),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip


def _half_log_data() -> tuple[np.ndarray, np.ndarray]:
    x = np.abs(np.random.default_rng(0).normal(size=(64, 2))).astype("float32") + 0.1
    x[20, 1] = -1.0
    return x, np.zeros((64, 1), "float32")


CASES: dict[str, tuple[Any, Any, Any, str | None]] = {
    # name: (model, optimizer, data, dtype policy)
    "relu-mlp": (_relu_mlp, lambda: keras.optimizers.Adam(1e-2), models.data, None),
    "sequential-tanh": (models.sequential, lambda: keras.optimizers.Adam(1e-2), models.data, None),
    "functional-nested": (models.functional, lambda: keras.optimizers.SGD(1e-2), models.data, None),
    "branches": (_branches, lambda: keras.optimizers.RMSprop(1e-2), models.data, None),
    "nan-on-a-light-step": (_half_log, lambda: keras.optimizers.SGD(1e-2), _half_log_data, None),
    "mixed-float16": (models.sequential, lambda: keras.optimizers.Adam(1e-2), models.data, "mixed_float16"),
    "loss-scaler-skips": (
        models.sequential,
        lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2), initial_scale=2.0**26),
        models.data,
        "mixed_float16",
    ),
}


def _records(case: str, recorder: Recorder, on_host: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    build, optimizer, data, policy = CASES[case]
    keras.backend.clear_session()
    if policy:
        keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(3)
    model = build()
    model.compile(optimizer(), "mse")
    x, y = data()
    monkeypatch.setattr(Instrumentation, "finish_on_host", on_host)
    fitted = fit_watched(model, x, y, recorder, batch_size=8, epochs=2, watch={"halt_on": "never"})
    assert len(fitted.records) == 2 * len(x) // 8
    return fitted.records


@pytest.mark.parametrize("case", list(CASES))
def test_light_steps_report_the_same_when_finished_on_the_host(
    case: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = _records(case, recorder, True, monkeypatch)
    device = _records(case, recorder, False, monkeypatch)

    for h, d in zip(host, device, strict=True):
        assert h["step"] == d["step"]
        assert set(h) == set(d) and set(h["layers"]) == set(d["layers"]), h["step"]
        for key in set(h) - {"step", "layers", "wall_time"}:
            _same(h[key], d[key], f"step {h['step']} {key}")
        for field, values in h["layers"].items():
            _same(values, d["layers"][field], f"step {h['step']} {field}")
    if case == "nan-on-a-light-step":  # the case is what it says: a NaN output on a light step
        assert math.isnan(host[2]["layers"]["act_mean"][0]) and math.isnan(host[2]["layers"]["act_frac_nonfinite"][0])
    if case == "loss-scaler-skips":
        skipped = [r["skipped"] for r in host]
        assert skipped[1] and "grad_norm" not in host[1] and not skipped[-1] and "grad_norm" in host[-1]


def _same(a: Any, b: Any, what: str) -> None:
    if isinstance(a, bool | str) or a is None:
        assert a == b, what
        return
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-5, atol=1e-7, err_msg=what)
