"""Recovery: roll a Keras model back to its last good state, cut the learning rate, and carry on.

What large-model teams do by hand after a loss spike (restart from the last good checkpoint, skip the
batches that led to it, lower the learning rate), for ``NanWatchCallback(recover=True)`` and for custom
loops. The state is every weight of the model (trainable or not: BatchNormalization's moving statistics
too) and every optimizer variable (slots, ``iterations``, a loss scaler's scale), copied to host memory
every ``every`` steps into one set of numpy arrays: the copy replaces the previous one array by array, so
at most one copy (and one variable in passing) is held. Rolling back assigns the copy to the variables,
multiplies the learning rate by ``factor`` (a schedule's output, through :class:`ScaledSchedule`) and goes
on with the next batch: the batches since the snapshot are not trained on again, so they are skipped.

A healthy run is untouched: copies only read the variables, and a schedule's output times 1.0 is the same
number, so its weights are bit for bit those of a run without recovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nanwatch.keras import _train_function


@keras.saving.register_keras_serializable(package="nanwatch")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """A learning-rate schedule (or a zero-argument callable) whose output is multiplied by a variable,
    so that recovery can scale it without retracing the training step. It stands in for the optimizer's
    own schedule during ``fit`` only; a model saved then (``ModelCheckpoint``) loads where
    ``nanwatch.keras`` is imported."""

    def __init__(self, schedule: Any, factor: tf.Variable) -> None:
        self.schedule = schedule
        self.factor = factor

    def __call__(self, step: Any) -> Any:
        takes_step = isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule)
        value = self.schedule(step) if takes_step else self.schedule()
        return tf.cast(value, tf.float32) * self.factor

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "factor": float(self.factor.numpy())}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledSchedule:
        schedule = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(schedule, tf.Variable(config["factor"], trainable=False, dtype=tf.float32))


def check(every: int, factor: float, max_recoveries: int) -> None:
    """Raise ValueError, saying what they take, for knobs out of range."""
    if not (every >= 1 and 0.0 < factor <= 1.0 and max_recoveries >= 0):
        raise ValueError(
            "nanwatch: recovery needs snapshot_every >= 1, 0 < lr_factor <= 1 and max_recoveries >= 0, got "
            f"snapshot_every={every}, lr_factor={factor}, max_recoveries={max_recoveries}"
        )


class Recovery:
    """The last good state of ``model`` and its optimizer on the host, and the way back to it.

    Args:
        model: a compiled Keras model (its optimizer is ``model.optimizer``).
        every: take a snapshot at most every ``every`` steps (:meth:`due`).
        factor: multiply the learning rate by this on each rollback (0 < factor <= 1).
        max_recoveries: rollbacks allowed in all; :attr:`left` is False after them.

    Custom loop::

        recovery = Recovery(model)
        recovery.snapshot(before_step=0)
        for step, (x, y) in enumerate(dataset):
            ...  # the step, then monitor.log_step(...)
            if halt is not None:
                if halt.source != "detector" or not recovery.left:
                    break
                details = recovery.roll_back(step)
                monitor.report_event(step, "recovery", recovery.describe(step, details), **details)
            elif recovery.due(step):
                recovery.snapshot(before_step=step + 1)
    """

    def __init__(self, model: keras.Model, *, every: int = 100, factor: float = 0.5, max_recoveries: int = 3) -> None:
        check(every, factor, max_recoveries)
        self.model, self.optimizer = model, model.optimizer
        self.every, self.factor, self.max_recoveries = int(every), float(factor), int(max_recoveries)
        self.recoveries = 0
        self.before_step: int | None = None  # the snapshot holds the state before this step
        self._copy: list[np.ndarray] = []
        self._scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="nanwatch_lr_factor")
        self._schedule: Any = None  # the optimizer's own schedule while a ScaledSchedule stands in for it

    @property
    def left(self) -> bool:
        """Whether another rollback is allowed."""
        return self.recoveries < self.max_recoveries

    def install(self) -> None:
        """Put a :class:`ScaledSchedule` in front of a learning-rate schedule (before the step is traced)."""
        owner = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # a LossScaleOptimizer's is inside
        current = getattr(owner, "_learning_rate", None)  # private: the schedule itself, not its value
        if self._schedule is None and callable(current) and not isinstance(current, tf.Variable):
            self._schedule = current
            self.optimizer.learning_rate = ScaledSchedule(current, self._scale)

    def restore(self) -> None:
        """Give the optimizer its own schedule back (the scaling stays with this object for the next fit)."""
        schedule, self._schedule = self._schedule, None
        if schedule is not None:
            self.optimizer.learning_rate = schedule

    def due(self, step: int) -> bool:
        """Whether a snapshot is due after ``step``."""
        return self.before_step is None or step + 1 - self.before_step >= self.every

    def snapshot(self, before_step: int) -> None:
        """Copy the state as it is before step ``before_step`` (one array at a time: one copy held)."""
        _train_function.build_optimizer(self.optimizer, list(self.model.trainable_variables))  # its slots count
        variables = self._variables()
        if len(self._copy) != len(variables):
            self._copy = [np.empty(0)] * len(variables)
        for i, variable in enumerate(variables):
            self._copy[i] = np.array(variable.numpy())
        self.before_step = before_step

    def roll_back(self, step: int) -> dict[str, float | int]:
        """Restore the snapshot after ``step`` went wrong and scale the learning rate; what was done."""
        if self.before_step is None:
            raise RuntimeError("nanwatch: no snapshot to roll back to; call snapshot() before training")
        lr = self._learning_rate() * self.factor
        for variable, value in zip(self._variables(), self._copy, strict=True):
            variable.assign(value)
        self._set_learning_rate(lr)
        self.recoveries += 1
        return {
            "recovery": self.recoveries,
            "rolled_back_to": self.before_step,
            "batches_skipped": step + 1 - self.before_step,
            "lr": float(self._learning_rate()),
            "lr_factor": self.factor**self.recoveries,
        }

    def describe(self, step: int, details: dict[str, float | int]) -> str:
        """One line for the run's events and the job's log."""
        return (
            f"recovery {details['recovery']} of {self.max_recoveries} at step {step}: rolled back to the state "
            f"before step {details['rolled_back_to']}, skipped {details['batches_skipped']} batch(es), "
            f"learning rate now {details['lr']:.4g}"
        )

    def _variables(self) -> Sequence[Any]:
        seen: set[int] = set()
        unique = []
        for variable in [*self.model.weights, *self.optimizer.variables]:
            if id(variable) not in seen:
                seen.add(id(variable))
                unique.append(variable)
        return unique

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def _set_learning_rate(self, lr: float) -> None:
        if self._schedule is not None:
            self._scale.assign(self._scale * self.factor)
        else:
            self.optimizer.learning_rate = lr
