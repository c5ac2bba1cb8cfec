"""S6: a sigmoid output trained with a hand-written cross-entropy until `log` meets an exact 0 or 1.

10 inputs x ~ N(0, 1), labels from a random linear teacher with rows closer than 0.5 to its boundary
dropped (a margin, so the data are separable and confidence keeps growing), 1,024 rows, batch 32,
Dense(64, relu) + Dense(1, sigmoid), SGD lr 0.5, loss `-(y·log p + (1-y)·log(1-p))` written by hand.

What really happens on TF 2.21 / CPU (seed 0): the loss falls from 0.83 to ~0.006 while the largest
|logit| in a batch climbs from ~1.4 to ~17 over 80 steps and the share of outputs within 1e-4 of 0 or 1
grows from 0 (first at step ~20) to ~20% of a batch. At step 87 a logit passes ~16.6, float32 rounds
sigmoid to exactly 1.0, `log(1 - p)` is -inf and `0 * -inf` makes the batch loss NaN; its gradient is
NaN too, so the weights are NaN after that step. The built-in `BinaryCrossentropy` clips p and would
not fail. Tuned: the margin and seed (the brief's "about step 82"; without a margin it fails near 69).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tests.scenarios._base import Scenario, compile_scenario

SEED = 0
ROWS, FEATURES, BATCH, EPOCHS = 1024, 10, 32, 3
MARGIN = 0.5


def handwritten_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Cross-entropy on probabilities with no clipping: -inf as soon as p is exactly 0 or 1."""
    log = keras.ops.log
    return -(y_true * log(y_pred) + (1.0 - y_true) * log(1.0 - y_pred))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((4 * ROWS, FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((FEATURES,))
    distance = x @ teacher / np.linalg.norm(teacher)
    keep = np.abs(distance) > MARGIN
    x, distance = x[keep][:ROWS], distance[keep][:ROWS]
    return x, (distance > 0).astype(np.float32)[:, None]


def build_saturating_sigmoid() -> tuple[keras.Model, dict[str, Any]]:
    """Dense(64, relu) + Dense(1, sigmoid), SGD 0.5, the hand-written cross-entropy."""
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="output"),
        ]
    )
    compile_scenario(model, keras.optimizers.SGD(0.5), handwritten_binary_crossentropy)
    x, y = _data()
    return model, {"x": x, "y": y, "batch_size": BATCH, "epochs": EPOCHS, "shuffle": False, "verbose": 0}


S6 = Scenario(
    name="S6",
    title="sigmoid + hand-written cross-entropy, SGD 0.5: logits grow until log(1 - p) = -inf, NaN at 87",
    diverges=True,
    expected_first_nonfinite=87,
    max_steps=92,
    dtype_policy="float32",
    build=build_saturating_sigmoid,
)
