"""The job of ``nanwatch demo``: a small Keras model that diverges the way deep nets do when nothing
normalizes them.

An 8×128 ReLU MLP trained by plain SGD (lr 0.01) on a regression with large targets (the test suite's
scenario S5). Unwatched, its global gradient norm climbs about 1.5× a step and its loss is NaN at step 15
on TF 2.21 / CPU; other TensorFlow builds and GPUs round differently and may diverge a few steps earlier
or later. ``nanwatch demo`` (in ``nanwatch_service.cli``) trains it once watched and once with Keras'
``TerminateOnNaN``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import keras
import numpy as np

SEED = 0
ROWS, FEATURES, DEPTH, WIDTH, BATCH = 2048, 20, 8, 128, 32
INPUT_SCALE, TARGET_SCALE = 3.0, 5.0  # the knobs that make seed 0 diverge at step 15
LEARNING_RATE = 0.01
TITLE = f"an {DEPTH}x{WIDTH} ReLU MLP, plain SGD lr {LEARNING_RATE}, no normalization"


def deep_sgd_data() -> tuple[np.ndarray, np.ndarray]:
    """2,048 rows of 20 inputs ~ N(0, 3²) and targets 5·(x·w/√20) from a random linear teacher."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32) * INPUT_SCALE
    teacher = rng.standard_normal((FEATURES, 1)).astype(np.float32)
    y = TARGET_SCALE * (x @ teacher) / np.float32(np.sqrt(FEATURES))
    return x, y.astype(np.float32)


def deep_sgd_model() -> keras.Model:
    """The uncompiled MLP (layers ``hidden_1``..``hidden_8`` and ``output``), seeded."""
    keras.utils.set_random_seed(SEED)
    hidden = [keras.layers.Dense(WIDTH, activation="relu", name=f"hidden_{i}") for i in range(1, DEPTH + 1)]
    return keras.Sequential([keras.Input(shape=(FEATURES,)), *hidden, keras.layers.Dense(1, name="output")])


@dataclass(frozen=True)
class Outcome:
    """One training of the demo job: how many steps ran, and whether every weight is still finite."""

    steps_run: int
    weights_finite: bool


def train(callbacks: list[keras.callbacks.Callback]) -> Outcome:
    """Train the job for one epoch (64 steps) with ``callbacks``."""
    model = deep_sgd_model()
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    x, y = deep_sgd_data()
    ends: list[int] = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(batch))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[*callbacks, counter])
    return Outcome(len(ends), all(bool(np.isfinite(w).all()) for w in model.get_weights()))


def train_with_terminate_on_nan() -> Outcome:
    """The baseline: the same job under Keras' ``TerminateOnNaN`` (its own verdict line is swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return train([keras.callbacks.TerminateOnNaN()])
