"""What the instrumented training step adds to Keras' own, pinned by the graph rather than timed.

The overhead bound (``bench/step_overhead.py``) rests on what a light step leaves in the graph: one
``l2_loss`` per gradient, one ``sum`` per watched layer output, no control flow, and a handful of small
ops that gather them into the raw vector the host finishes. A change that adds per-step work shows here
before it shows in a benchmark on a noisy machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from nanwatch.keras._instrument import Instrumentation
from tests.keras.conftest import fit_watched
from tests.keras.recorder import Recorder

pytestmark = pytest.mark.tf

CONTROL_FLOW = ("If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase", "Switch", "Merge")
# Besides the reductions: per gradient or output one small op (the identity that orders a gradient after its
# reduction, the reshape of an output's quick vector), and a few that gather the raw vector once for all
# (stacks, one concat, the learning rate's read): its finishing runs on the host (``_raw``). A budget, not a
# count: the light step takes 18 of its 21 for the model below (52 when the device finished the vector).
# Constants are not counted (Grappler folds them before the step runs).
PER_TENSOR, FINISHING = 1, 12


def _relu_mlp() -> keras.Model:
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="first"),
        keras.layers.Dense(16, activation="relu", name="second"),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    return model


def _ops(graph: Any) -> Counter[str]:
    """The op types that run: reachable from the step's outputs and control outputs (TensorFlow prunes
    the rest from the function before it runs), stateful ops included as TensorFlow keeps them."""
    live: set[Any] = set()
    todo = [t.op for t in graph.outputs] + list(graph.control_outputs)
    todo += [op for op in graph.get_operations() if op._is_stateful]
    while todo:
        op = todo.pop()
        if op not in live:
            live.add(op)
            todo += [t.op for t in op.inputs] + list(op.control_inputs)
    return Counter(op.type for op in live)


@pytest.fixture
def plain_ops() -> Counter[str]:
    """The op counts of Keras' own training step for the model (no callback)."""
    model = _relu_mlp()
    graphs: list[Any] = []
    step = model.train_step

    def train_step(data: Any) -> Any:
        logs = step(data)
        graphs.append(tf.compat.v1.get_default_graph())
        return logs

    model.train_step = train_step
    x, y = np.zeros((16, 8), "float32"), np.zeros((16, 1), "float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert graphs
    return _ops(graphs[-1])


def _graph_kept(make_vector: Any, graphs: dict[Any, Any]) -> Any:
    def making(self: Instrumentation, trace: Any) -> Any:
        vector = make_vector(self, trace)
        graphs[trace.detail] = trace.graph
        return vector

    return making


def test_a_light_step_adds_one_reduction_per_gradient_and_output_and_no_control_flow(
    recorder: Recorder, plain_ops: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    graphs: dict[Any, Any] = {}
    for method in ("_record", "_raw_vector"):  # a detail step's vector, a light step's raw vector
        monkeypatch.setattr(Instrumentation, method, _graph_kept(getattr(Instrumentation, method), graphs))
    keras.utils.set_random_seed(0)
    model = _relu_mlp()
    x, y = np.random.default_rng(0).normal(size=(32, 8)).astype("float32"), np.zeros((32, 1), "float32")
    fitted = fit_watched(model, x, y, recorder, batch_size=8)  # defaults: a light and a detail step function

    assert set(graphs) == {False, True}
    light = _ops(graphs[False]) - plain_ops
    detail = _ops(graphs[True]) - plain_ops
    gradients, outputs = len(model.trainable_variables), len(fitted.run["layers"])
    assert (gradients, outputs) == (6, 3)
    assert not any(light[op] for op in CONTROL_FLOW)
    assert light["L2Loss"] == gradients and light["Sum"] == outputs  # each read once
    assert light["Min"] == 0 and light["Max"] <= 1  # no max/min of any output (one over the small matrix)
    small = sum(light.values()) - light["Const"] - gradients - outputs
    assert small <= PER_TENSOR * (gradients + outputs) + FINISHING, sorted(light.items())
    # a detail step: the reductions of the details, and one tf.cond for the non-finite case
    assert detail["If"] + detail["StatelessIf"] == 1
