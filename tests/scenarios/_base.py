"""What every scenario shares: the `Scenario` record, the per-batch loss metric and the compile helper."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

Loss = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Scenario:
    """A short, deterministic Keras training run whose numerical fate was measured on TF 2.21 / CPU.

    `expected_first_nonfinite` is the 0-based global train step (counted across epochs) after which the
    batch loss or a weight is first non-finite when nothing monitors the run; None for healthy runs.
    `build` sets the seed and the dtype policy itself and returns a compiled model and `model.fit` kwargs.
    """

    name: str
    title: str
    diverges: bool
    expected_first_nonfinite: int | None
    max_steps: int
    dtype_policy: str
    build: Callable[[], tuple[keras.Model, dict[str, Any]]]


class BatchLoss(keras.metrics.Metric):
    """The loss of the last batch alone, logged as `batch_loss`.

    Keras 3 logs `loss` as the epoch's running mean; differencing that mean loses precision and turns into
    inf - inf = NaN after the first infinite batch, so the scenarios log the batch loss itself. The metric
    calls the very `Loss` object the model was compiled with on the same `y_pred`, before the update.
    """

    def __init__(self, loss: keras.losses.Loss, name: str = "batch_loss") -> None:
        super().__init__(name=name)
        self._loss = loss
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        loss = self._loss(y_true, y_pred, sample_weight)
        self.value.assign(keras.ops.cast(loss, self.dtype))

    def result(self) -> Any:
        return self.value


class _FunctionLoss(keras.losses.Loss):
    # What Keras does to a plain loss function in compile(), made explicit so BatchLoss can share it.
    def __init__(self, fn: Loss) -> None:
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.fn(y_true, y_pred)


def compile_scenario(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss: Loss) -> keras.Model:
    """Compile `model` with `loss` (a `keras.losses.Loss` or a plain function) and the `BatchLoss` metric."""
    if not isinstance(loss, keras.losses.Loss):
        loss = _FunctionLoss(loss)
    model.compile(optimizer=optimizer, loss=loss, metrics=[BatchLoss(loss)])
    return model


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set the global Keras dtype policy for building a model; restore the previous one even on error."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
