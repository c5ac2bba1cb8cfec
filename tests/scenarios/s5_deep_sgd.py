"""S5: an 8×128 ReLU MLP without normalization, trained by plain SGD (lr 0.01) on a regression with large targets.

Data: 2,048 rows of 20 inputs x ~ N(0, 3²) (the inputs ×3 are the tuned knob), targets 5·(x·w/√20) from a
random linear teacher (targets ×5, so y ~ N(0, 15²)), batch 32, mse, Keras' default initializers.

What really happens on TF 2.21 / CPU (seed 0): the batch loss hovers at 85-190 for 11 steps while the
global gradient norm, after one spike at step 4 (~200), climbs about 1.5× a step from ~12 at step 5 to
~100 at step 10, evenly over all nine kernels (each ~4 → ~35); then 5.7e3 (step 11), 1.1e3, 3.9e5 and an
overflow-sized norm at step 14. The loss follows only at the end: 960 (step 11), 2.2e4 (13), 1.5e31 (14),
NaN at step 15, when `hidden_1` outputs ~1e28, `hidden_2` overflows to inf and everything after it is
NaN; that update makes the weights NaN. A deep ReLU net under SGD diverges as a cliff, not as a smooth
geometric climb: every variant tried (He/LeCun/Glorot init, inputs ×1-8, a zero output layer, seeds
0-9) showed at most ~3-4 steps of *loss* growth, so the ≥ 8-step precursor here is the gradient norm.
Other seeds and scales diverge anywhere between steps 3 and 110, or not at all; seed 0 at ×3 matches
the brief's "NaN at about step 15". Layers are named hidden_1..hidden_8 and output.
"""

from __future__ import annotations

from typing import Any

import keras

from nanwatch.keras.demo import BATCH, LEARNING_RATE, deep_sgd_data, deep_sgd_model
from tests.scenarios._base import Scenario, compile_scenario


def build_deep_sgd() -> tuple[keras.Model, dict[str, Any]]:
    """8×128 ReLU + linear output, SGD 0.01, mse on targets ×5 (inputs ×3): the job of ``nanwatch demo``."""
    model = deep_sgd_model()
    compile_scenario(model, keras.optimizers.SGD(LEARNING_RATE), keras.losses.MeanSquaredError())
    x, y = deep_sgd_data()
    return model, {"x": x, "y": y, "batch_size": BATCH, "epochs": 1, "shuffle": False, "verbose": 0}


S5 = Scenario(
    name="S5",
    title="8×128 ReLU MLP, no normalization, SGD 0.01, mse on targets ×5: gradient norm climbs, NaN at 15",
    diverges=True,
    expected_first_nonfinite=15,
    max_steps=20,
    dtype_policy="float32",
    build=build_deep_sgd,
)
