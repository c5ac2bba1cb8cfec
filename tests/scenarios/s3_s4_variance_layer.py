"""S3 and S4: the seed article's custom layer that divides each row by its variance, without and with epsilon.

The data are the article's three rows, one of them constant ([1]*10), one [1..10], one all zeros, with
batch size 1 and Adam 1e-3 on mse. What really happens on TF 2.21:

- S3 (no epsilon): the first row has variance 0, so `MyCustomLayer` outputs inf (1/0), the Dense layer
  after it mixes +inf and -inf kernel terms into NaN, and the loss and every gradient are NaN at step 0;
  Adam writes NaN into the Dense kernel and bias in that same step. The third row is 0/0 = NaN too.
- S4 (`+ keras.backend.epsilon()`, 1e-7): every value stays finite, but the constant row is divided by
  1e-7, so the layer amplifies its input by 1e7 and the batch loss on that row is 4.2e12 at step 0, falling
  slowly to 3.6e11 by step 27 (Adam shrinks the Dense kernel); the other rows' losses are 1e-5 to 3.
  Finite for all 30 steps: only an amplification / zero-variance detector can flag it, not TerminateOnNaN.
Changed from the article: one `MyCustomLayer` with an `epsilon` argument (0.0 for S3, and x + 0.0 == x)
instead of two copies, `keras.ops.var` for `tf.math.reduce_variance`, explicit layer names. 10 epochs kept.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tests.scenarios._base import Scenario, compile_scenario

SEED = 3
EPOCHS = 10


class MyCustomLayer(keras.layers.Layer):
    """Divides each row by its variance; with `epsilon` added to the denominator when given (S4)."""

    def __init__(self, epsilon: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs: Any) -> Any:
        variance = keras.ops.var(inputs, axis=1)
        return inputs / (variance[:, None] + self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[1] * 10, list(range(1, 11)), [0] * 10], dtype=np.float32)
    y = np.array([[1], [2], [0]], dtype=np.float32)
    return x, y


def _build(epsilon: float) -> tuple[keras.Model, dict[str, Any]]:
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [keras.Input(shape=(10,)), MyCustomLayer(epsilon, name="my_custom_layer"), keras.layers.Dense(1, name="dense")]
    )
    compile_scenario(model, keras.optimizers.Adam(1e-3), keras.losses.MeanSquaredError())
    x, y = _data()
    return model, {"x": x, "y": y, "batch_size": 1, "epochs": EPOCHS, "shuffle": False, "verbose": 0}


def build_zero_variance() -> tuple[keras.Model, dict[str, Any]]:
    """The article's example 3: `inputs / variance` on rows whose variance is 0."""
    return _build(0.0)


def build_epsilon_variance() -> tuple[keras.Model, dict[str, Any]]:
    """The article's example 4: `inputs / (variance + keras.backend.epsilon())`."""
    return _build(keras.backend.epsilon())


S3 = Scenario(
    name="S3",
    title="seed example 3: MyCustomLayer divides by a zero row variance (NaN at the first step)",
    diverges=True,
    expected_first_nonfinite=0,
    max_steps=3 * EPOCHS,
    dtype_policy="float32",
    build=build_zero_variance,
)
S4 = Scenario(
    name="S4",
    title="seed example 4: the same layer with + epsilon (finite, but amplifies by 1e7, loss ~1e12)",
    diverges=False,
    expected_first_nonfinite=None,
    max_steps=3 * EPOCHS,
    dtype_policy="float32",
    build=build_epsilon_variance,
)
