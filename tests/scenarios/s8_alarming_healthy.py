"""S8a-c: healthy runs that look alarming, for measuring false alarms. None of them ever goes non-finite.

- S8a noisy labels: a small ReLU regression whose targets carry heavy-tailed noise (5% of rows get an
  outlier of 10 standard deviations), so batch losses range from 0.3 to 38 around a median of ~1, with
  the same spikes in every epoch (no shuffling).
- S8b warm-up: SGD with momentum whose learning rate rises linearly to 0.1 over the first 64 steps (a custom
  `LearningRateSchedule`), so the update size and the update/weight ratio grow 64× while the loss falls.
- S8c plateau: a deep tanh net from a tiny initialization sits on a saddle; the loss stays flat and the
  gradients tiny for ~90 steps (0.36-0.40), then it learns (below 0.2 at step 95, 0.01 at 127).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tests.scenarios._base import Scenario, compile_scenario

SEED = 8
ROWS, FEATURES, BATCH = 1024, 10, 32


def _teacher_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((FEATURES, 1)).astype(np.float32)
    return x, np.tanh(x @ teacher / np.float32(np.sqrt(FEATURES)))


def _fit_kwargs(x: np.ndarray, y: np.ndarray, epochs: int) -> dict[str, Any]:
    y = y.astype(np.float32)
    return {"x": x, "y": y, "batch_size": BATCH, "epochs": epochs, "shuffle": False, "verbose": 0}


def _mlp(units: int, depth: int, activation: str, **dense_kwargs: Any) -> keras.Model:
    hidden = [keras.layers.Dense(units, activation=activation, **dense_kwargs) for _ in range(depth)]
    return keras.Sequential([keras.Input(shape=(FEATURES,)), *hidden, keras.layers.Dense(1, **dense_kwargs)])


def build_noisy_labels() -> tuple[keras.Model, dict[str, Any]]:
    """2×32 ReLU regression, Adam 1e-3, mse, 5% of targets hit by an outlier of 10 standard deviations."""
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x, y = _teacher_data(rng)
    outlier = rng.random((ROWS, 1)) < 0.05
    y = y + np.where(outlier, 10.0 * rng.standard_normal((ROWS, 1)), 0.1 * rng.standard_normal((ROWS, 1)))
    model = _mlp(32, 2, "relu")
    compile_scenario(model, keras.optimizers.Adam(1e-3), keras.losses.MeanSquaredError())
    return model, _fit_kwargs(x, y, epochs=3)


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate rising linearly from 0 to `peak` over `warmup_steps`, then held."""

    def __init__(self, peak: float, warmup_steps: int) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps

    def __call__(self, step: Any) -> Any:
        fraction = keras.ops.minimum(keras.ops.cast(step + 1, "float32") / self.warmup_steps, 1.0)
        return self.peak * fraction

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def build_warmup() -> tuple[keras.Model, dict[str, Any]]:
    """3×64 ReLU regression, SGD with momentum 0.9 whose learning rate warms up to 0.1 over 64 steps."""
    keras.utils.set_random_seed(SEED)
    x, y = _teacher_data(np.random.default_rng(SEED))
    model = _mlp(64, 3, "relu")
    optimizer = keras.optimizers.SGD(LinearWarmup(0.1, 64), momentum=0.9)
    compile_scenario(model, optimizer, keras.losses.MeanSquaredError())
    return model, _fit_kwargs(x, y, epochs=3)


def build_plateau() -> tuple[keras.Model, dict[str, Any]]:
    """4×32 tanh regression from a tiny initialization (stddev 0.05), SGD 0.1: a long flat start."""
    keras.utils.set_random_seed(SEED)
    x, y = _teacher_data(np.random.default_rng(SEED))
    model = _mlp(32, 4, "tanh", kernel_initializer=keras.initializers.RandomNormal(stddev=0.05))
    compile_scenario(model, keras.optimizers.SGD(0.1), keras.losses.MeanSquaredError())
    return model, _fit_kwargs(x, y, epochs=4)


def _healthy(name: str, title: str, max_steps: int, build: Any) -> Scenario:
    return Scenario(name, title, False, None, max_steps, "float32", build)


S8A = _healthy("S8a", "noisy labels: per-batch loss spikes up to ~40× the median, healthy", 96, build_noisy_labels)
S8B = _healthy("S8b", "learning-rate warm-up over 64 steps: growing updates, healthy", 96, build_warmup)
S8C = _healthy("S8c", "plateau: flat loss and tiny gradients for ~90 steps, healthy", 128, build_plateau)
