"""The public scenario suite: short, deterministic Keras training runs that go non-finite, or look as if they might.

Each scenario is a few seconds of real TF training on the CPU, with `keras.utils.set_random_seed` and numpy
Generator data, `shuffle=False`. `expected_first_nonfinite` was measured unmonitored on TF 2.21 / Keras
3.15 CPU with TensorFlow's own kernels and is checked by `test_scenarios.py`. The test suite turns oneDNN
off (`TF_ENABLE_ONEDNN_OPTS=0`, `tests/conftest.py`), which TensorFlow turns on by default on CPUs with
AVX-512 VNNI/BF16: its kernels, chosen by instruction set at run time, move the step (S6 stays finite
past step 87 on such an AMD EPYC). Other TF versions may move it a step or two.

| name | what happens |
|---|---|
| S1, S2 | the seed article's deep ReLU MLP, without and with BatchNormalization: healthy |
| S3 | `MyCustomLayer` divides by a zero row variance: NaN at step 0 |
| S4 | the same with + epsilon: finite, but the layer amplifies ×1e7 and the loss is ~1e12 |
| S5 | 8×128 ReLU MLP, SGD: the gradient norm climbs, then a cliff; NaN at step 15 |
| S6 | sigmoid + hand-written cross-entropy: logits grow until log(1 - p) = -inf; NaN at 87 |
| S7 | mixed_float16: activations climb to 65504, loss inf at 16, weights stay finite |
| S8a-c | noisy labels, learning-rate warm-up, a plateau: alarming-looking but healthy |

Use: `run_scenario("S5", callbacks=[NanWatchCallback(...)])`; the callbacks run before the recorder that
fills the `ScenarioResult`, so a halt at step k shows as `steps_run == k + 1`.
"""

from __future__ import annotations

from dataclasses import replace

import keras

from tests.scenarios._base import Scenario
from tests.scenarios._run import ScenarioResult, run
from tests.scenarios.s1_s2_seed_mlp import S1, S2
from tests.scenarios.s3_s4_variance_layer import S3, S4
from tests.scenarios.s5_deep_sgd import S5
from tests.scenarios.s6_saturating_sigmoid import S6
from tests.scenarios.s7_mixed_precision import S7
from tests.scenarios.s8_alarming_healthy import S8A, S8B, S8C

__all__ = ["SCENARIOS", "Scenario", "ScenarioResult", "fit_steps", "run_scenario"]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (S1, S2, S3, S4, S5, S6, S7, S8A, S8B, S8C)}


def run_scenario(
    name: str, callbacks: list[keras.callbacks.Callback] | None = None, *, every_epoch: bool = False
) -> ScenarioResult:
    """Train scenario `name` for at most its `max_steps` with `callbacks`, and record what happened;
    `every_epoch`: for all the epochs of its `fit` instead (a recovering run's whole training).

    The global dtype policy is restored afterwards, even on error. Nothing is printed.
    """
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; pick one of {', '.join(SCENARIOS)}")
    scenario = SCENARIOS[name]
    if every_epoch:
        scenario = replace(scenario, max_steps=fit_steps(scenario))
    return run(scenario, callbacks)


def fit_steps(scenario: Scenario) -> int:
    """The steps of all the epochs of the scenario's `fit`."""
    _, fit_kwargs = scenario.build()
    keras.backend.clear_session()
    return int(-(-len(fit_kwargs["x"]) // fit_kwargs["batch_size"]) * fit_kwargs["epochs"])
