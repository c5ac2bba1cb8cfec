"""S1 and S2: the seed article's first two examples, a deep ReLU MLP without and with BatchNormalization.

The article claims S1 "will often result in NaN" from exploding gradients. On TF 2.21 / Keras 3.15 it does
not: 3×128 ReLU + sigmoid on uniform [0, 1) inputs with Adam 1e-3 trains for 10 epochs with a loss that
stays near ln 2 ≈ 0.69 (random labels carry nothing to learn). Both are healthy controls. Changed from the
article only where Keras 3 requires it: `keras.Input` instead of `input_shape=` (which now warns), numpy
Generator data instead of the global `np.random`, and `shuffle=False` for determinism.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tests.scenarios._base import Scenario, compile_scenario

SEED = 1
ROWS, FEATURES, BATCH, EPOCHS = 1000, 10, 32, 10
STEPS = EPOCHS * -(-ROWS // BATCH)  # 32 steps per epoch, the last one of 8 rows


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.random((ROWS, FEATURES), dtype=np.float32)
    y = rng.integers(0, 2, size=(ROWS, 1)).astype(np.float32)
    return x, y


def _fit_kwargs() -> dict[str, Any]:
    x, y = _data()
    return {"x": x, "y": y, "batch_size": BATCH, "epochs": EPOCHS, "shuffle": False, "verbose": 0}


def build_relu_mlp() -> tuple[keras.Model, dict[str, Any]]:
    """The article's example 1: Dense(128, relu) ×3 + Dense(1, sigmoid), Adam 1e-3, binary cross-entropy."""
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    compile_scenario(model, keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy())
    return model, _fit_kwargs()


def build_batchnorm_mlp() -> tuple[keras.Model, dict[str, Any]]:
    """The article's example 2: each Dense(128) followed by BatchNormalization and then ReLU."""
    keras.utils.set_random_seed(SEED)
    hidden = []
    for _ in range(3):
        hidden += [
            keras.layers.Dense(128),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
        ]
    model = keras.Sequential([keras.Input(shape=(FEATURES,)), *hidden, keras.layers.Dense(1, activation="sigmoid")])
    compile_scenario(model, keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy())
    return model, _fit_kwargs()


S1 = Scenario(
    name="S1",
    title="seed example 1: deep ReLU MLP, Adam 1e-3, binary cross-entropy (healthy on TF 2.21)",
    diverges=False,
    expected_first_nonfinite=None,
    max_steps=STEPS,
    dtype_policy="float32",
    build=build_relu_mlp,
)
S2 = Scenario(
    name="S2",
    title="seed example 2: the same MLP with BatchNormalization (healthy)",
    diverges=False,
    expected_first_nonfinite=None,
    max_steps=STEPS,
    dtype_policy="float32",
    build=build_batchnorm_mlp,
)
