"""S7: `mixed_float16` activations climb to the float16 limit (65504) while the loss scaler keeps weights finite.

20 inputs x ~ N(0, 300²) (inputs ×300), regression targets 3000·(x/300·w/√20) from a random linear teacher,
1,024 rows, batch 32; two Dense(64, relu) layers computing in float16 and a float32 Dense(1) output (as
Keras recommends); SGD lr 0.01, which compile() wraps in a `LossScaleOptimizer`; mean absolute error.

What really happens on TF 2.21 / CPU (seed 2): the scaled float16 gradients overflow on 12 of the first
16 steps, so the scaler skips them and halves its scale each time, 32768 → 8. The four updates it lets
through (steps 4, 7, 11, 15) each push the largest activation of `hidden_2` up: ~600 (steps 0-4),
~900 (5-7), 5e3-9e3 (8-11), 3.4e4-4.6e4 (12-14), 5.3e4 (15), within 1.2× of 65504. At step 16 it
passes 65504, float16 makes it inf, and the batch loss is inf (NaN from step 21); every gradient is
then non-finite, so the scaler skips every update and keeps halving: the weights stay finite to the end.
Tuned: mse (not specified) overshoots in one step instead of climbing (13 skipped steps while the scale
falls to 4, then the first applied update sends activations to inf at step 14), so the loss is the
bounded-gradient mean absolute error on targets in the thousands, which moves the weights by a bounded
amount per applied update. The global dtype policy is set only while the model is built, and restored after.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tests.scenarios._base import Scenario, compile_scenario, dtype_policy

SEED = 2
ROWS, FEATURES, BATCH, EPOCHS = 1024, 20, 32, 1
INPUT_SCALE, TARGET_SCALE = 300.0, 3000.0
POLICY = "mixed_float16"


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32) * INPUT_SCALE
    teacher = rng.standard_normal((FEATURES, 1)).astype(np.float32)
    y = TARGET_SCALE * (x / INPUT_SCALE) @ teacher / np.float32(np.sqrt(FEATURES))
    return x, y.astype(np.float32)


def build_fp16_overflow() -> tuple[keras.Model, dict[str, Any]]:
    """Two float16 Dense(64, relu) layers and a float32 output, SGD 0.01 under loss scaling, MAE."""
    keras.utils.set_random_seed(SEED)
    with dtype_policy(POLICY):
        model = keras.Sequential(
            [
                keras.Input(shape=(FEATURES,)),
                keras.layers.Dense(64, activation="relu", name="hidden_1"),
                keras.layers.Dense(64, activation="relu", name="hidden_2"),
                keras.layers.Dense(1, dtype="float32", name="output"),
            ]
        )
        compile_scenario(model, keras.optimizers.SGD(0.01), keras.losses.MeanAbsoluteError())
    x, y = _data()
    return model, {"x": x, "y": y, "batch_size": BATCH, "epochs": EPOCHS, "shuffle": False, "verbose": 0}


S7 = Scenario(
    name="S7",
    title="mixed_float16: activations climb to 65504, loss inf at 16, loss scaler keeps weights finite",
    diverges=True,
    expected_first_nonfinite=16,
    max_steps=22,
    dtype_policy=POLICY,
    build=build_fp16_overflow,
)
