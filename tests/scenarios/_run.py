"""Running a scenario: a last-in-line recorder callback and the `ScenarioResult` it fills."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tests.scenarios._base import Scenario


@dataclass
class ScenarioResult:
    """What really happened in one run of a scenario.

    `losses[k]` is the loss of train step k alone (the `batch_loss` metric, see `BatchLoss`), not Keras 3's
    running epoch mean. `first_nonfinite` is the first step after which that loss or any model weight is
    NaN or infinite.
    """

    steps_run: int = 0
    first_nonfinite: int | None = None
    weights_finite_at_end: bool = True
    losses: list[float] = field(default_factory=list)


def weights_finite(model: keras.Model) -> bool:
    """Whether every weight of `model` (trainable or not) is finite; one read per variable."""
    return all(bool(np.isfinite(keras.ops.convert_to_numpy(w)).all()) for w in model.weights)


def _finite_weights_check(model: keras.Model) -> Callable[[], Any]:
    # One compiled reduction and one device read per step instead of one per variable (~10x cheaper).
    weights = [w for w in model.weights if keras.backend.is_float_dtype(w.dtype)]

    @tf.function
    def all_finite() -> Any:
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in weights])

    return all_finite


class _Recorder(keras.callbacks.Callback):
    # Runs after every other callback, so it sees the step the others acted on, and stops at max_steps.
    def __init__(self, max_steps: int) -> None:
        super().__init__()
        self.max_steps = max_steps
        self.result = ScenarioResult()
        self._all_finite: Callable[[], Any] = lambda: True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._all_finite = _finite_weights_check(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        result = self.result
        result.losses.append(float((logs or {})["batch_loss"]))
        result.steps_run += 1
        # Once something is non-finite the weight scan is no longer needed: keep the recorder cheap.
        if result.first_nonfinite is None and not (math.isfinite(result.losses[-1]) and bool(self._all_finite())):
            result.first_nonfinite = result.steps_run - 1
        if result.steps_run >= self.max_steps:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.result.weights_finite_at_end = weights_finite(self.model)


def run(scenario: Scenario, callbacks: list[keras.callbacks.Callback] | None = None) -> ScenarioResult:
    """Build and train `scenario` for at most `max_steps` steps with `callbacks` ahead of the recorder."""
    previous_policy = keras.config.dtype_policy()
    try:
        model, fit_kwargs = scenario.build()
        recorder = _Recorder(scenario.max_steps)
        fit_callbacks = [*(callbacks or []), *fit_kwargs.pop("callbacks", []), recorder]
        model.fit(**fit_kwargs, callbacks=fit_callbacks)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return recorder.result
