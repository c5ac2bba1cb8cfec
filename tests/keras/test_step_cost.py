"""What the instrumented training step adds to Keras' own, pinned by the graph rather than timed.

The overhead bound (``bench/step_overhead.py``) rests on what a light step leaves in the graph: one
``l2_loss`` per gradient, one ``sum`` per watched layer output, one ``tf.cond`` (the guard's, around the
optimizer's update) and a bounded number of small ops that make the step vector. A change that adds
per-step work shows here before it shows in a benchmark on a noisy machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.keras.conftest import fit_watched
from tests.keras.recorder import Recorder

pytestmark = pytest.mark.tf

CONTROL_FLOW = ("If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase", "Switch", "Merge")
# Besides the reductions: per gradient or output one small op (the identity that orders a gradient after its
# reduction, the reshape of an output's quick vector), and the ops that make the step vector once for all
# (segment sums by layer column, square roots, the layout's concat), plus the guard's sum and finite test.
# A budget, not a count: the light step takes 39 of its 41 for the model below (18 while a light step's
# vector was finished on the host, 2 of them the guard's). Constants are not counted (Grappler folds them
# before the step runs).
PER_TENSOR, FINISHING = 1, 32


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


def _recording_graphs(model: keras.Model) -> list[Any]:
    """The graphs ``model.train_step`` is traced in, in order (the callback wraps what it finds there)."""
    graphs: list[Any] = []
    step = model.train_step

    def train_step(data: Any) -> Any:
        graphs.append(tf.compat.v1.get_default_graph())
        return step(data)

    model.train_step = train_step
    return graphs


def test_a_light_step_adds_one_reduction_per_gradient_and_output_and_only_the_guard(
    recorder: Recorder, plain_ops: Counter[str]
) -> None:
    keras.utils.set_random_seed(0)
    model = _relu_mlp()
    graphs = _recording_graphs(model)
    x, y = np.random.default_rng(0).normal(size=(32, 8)).astype("float32"), np.zeros((32, 1), "float32")
    fitted = fit_watched(model, x, y, recorder, batch_size=8, watch={"activation_stride": 2})

    # step 0 traces the detail function twice (the first trace, which makes the optimizer's variables, is
    # thrown away), step 1 the light one
    assert len(graphs) == 3
    detail, light = (_ops(graph) - plain_ops for graph in graphs[1:])
    gradients, outputs = len(model.trainable_variables), len(fitted.run["layers"])
    assert (gradients, outputs) == (6, 3)
    assert light["If"] + light["StatelessIf"] == 1  # the guard's, around the optimizer's update
    assert detail["If"] + detail["StatelessIf"] == 2  # and the detail step's for the non-finite case
    assert not any(light[op] for op in CONTROL_FLOW if op not in ("If", "StatelessIf"))
    assert light["L2Loss"] == gradients and light["Sum"] == outputs  # each read once
    assert light["Min"] == 0 and light["Max"] <= 1  # no max/min of any output (one over the small matrix)
    small = sum(light.values()) - light["Const"] - gradients - outputs
    assert small <= PER_TENSOR * (gradients + outputs) + FINISHING, (small, sorted(light.items()))
