"""Re-record the traces in this folder from the scenario suite (needs TensorFlow; not run by the tests).

    .venv/bin/python -m tests.detectors.traces.record S5 S6 S7

Each scenario's ``build()`` gives the model, its compiled optimizer and loss, and the data. A GradientTape
loop then runs the same steps as ``model.fit`` and computes, per step, the statistics of the wire protocol
(``protocol.LAYER_FIELDS``) the way the Keras client defines them, layer by layer in forward order.
"""

from __future__ import annotations

import gzip
import math
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nanwatch import protocol
from tests.scenarios import (
    s1_s2_seed_mlp,
    s3_s4_variance_layer,
    s5_deep_sgd,
    s6_saturating_sigmoid,
    s7_mixed_precision,
    s8_alarming_healthy,
)
from tests.scenarios._base import Scenario

BOUNDED = ("sigmoid", "softmax", "tanh")


def _activation(layer: keras.layers.Layer) -> str | None:
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return None if name in (None, "linear") else name


def _norm(tensors: list[Any]) -> float:
    return math.sqrt(sum(float(tf.reduce_sum(tf.square(tf.cast(t, tf.float64)))) for t in tensors))


def _act_stats(x: Any, out: Any, activation: str | None) -> dict[str, float]:
    inp = tf.cast(x, tf.float64).numpy().reshape(len(x), -1)
    o = tf.cast(out, tf.float64).numpy().reshape(len(out), -1)
    finite = np.isfinite(o)
    bound = (np.abs(o) >= 1 - 1e-7) if activation == "tanh" else ((o <= 1e-7) | (o >= 1 - 1e-7))
    with np.errstate(all="ignore"):
        return {
            "act_mean": float(np.mean(o)),
            "act_std": float(np.std(o)),
            "act_max_abs": math.inf if np.isinf(o).any() else float(np.max(np.abs(o[finite]), initial=0.0)),
            "act_frac_zero": float(np.mean(o == 0)),
            "act_frac_nonfinite": float(1 - finite.mean()),
            "act_frac_saturated": float(np.mean(bound)) if activation in BOUNDED else 0.0,
            "act_frac_zero_var": float(np.mean(np.var(o, axis=1) == 0)),
            "in_max_abs": math.inf
            if np.isinf(inp).any()
            else float(np.max(np.abs(inp[np.isfinite(inp)]), initial=0.0)),
        }


def _layer_stats(layer: keras.layers.Layer, grads: list[Any], before: list[Any]) -> dict[str, float]:
    if not grads:
        return dict.fromkeys(("grad_norm", "grad_mean_abs", "weight_norm", "update_norm"), 0.0)
    size = sum(int(np.prod(g.shape)) for g in grads)
    return {
        "grad_norm": _norm(grads),
        "grad_mean_abs": sum(float(tf.reduce_sum(tf.abs(tf.cast(g, tf.float64)))) for g in grads) / size,
        "weight_norm": _norm(layer.trainable_variables),
        "update_norm": _norm(
            [tf.cast(v, tf.float64) - b for v, b in zip(layer.trainable_variables, before, strict=True)]
        ),
    }


def _step(model: keras.Model, x: Any, y: Any, step: int) -> dict[str, Any]:
    opt, mixed = model.optimizer, isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [[tf.cast(v, tf.float64) for v in layer.trainable_variables] for layer in model.layers]
    with tf.GradientTape() as tape:
        h, acts = x, []
        for layer in model.layers:
            out = layer(h, training=True)
            acts.append(_act_stats(h, out, _activation(layer)))
            h = out
        loss = model.loss(y, tf.cast(h, tf.float32))
        scaled = opt.scale_loss(loss) if mixed else loss
    variables = model.trainable_variables
    scaled_grads = tape.gradient(scaled, variables)
    scale = float(opt.dynamic_scale.numpy()) if mixed else 1.0
    grads = {id(v): tf.cast(g, tf.float32) / scale for v, g in zip(variables, scaled_grads, strict=True)}
    skipped = mixed and not all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads.values())
    opt.apply(scaled_grads, variables)
    record: dict[str, Any] = {"step": step, "loss": float(loss), "grad_norm": _norm(list(grads.values()))}
    if mixed:
        record.update(loss_scale=float(opt.dynamic_scale.numpy()), skipped=bool(skipped))
    rows = [
        {**_layer_stats(layer, [grads[id(v)] for v in layer.trainable_variables], b), **a}
        for layer, b, a in zip(model.layers, before, acts, strict=True)
    ]
    record["layers"] = {field: [row[field] for row in rows] for field in protocol.LAYER_FIELDS}
    return record


def record(scenario: Scenario, limit: int = 400) -> dict[str, Any]:
    """The scenario's run registration and step records."""
    model, fit = scenario.build()
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        model.optimizer.build(model.trainable_variables)
    x, y, size = fit["x"], fit["y"], fit["batch_size"]
    batches = [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)] * fit.get("epochs", 1)
    records = []
    for step, (xb, yb) in enumerate(batches[: min(scenario.max_steps, limit)]):
        records.append(_step(model, tf.constant(xb), tf.constant(yb), step))
    layers = [
        {
            "name": layer.name,
            "kind": type(layer).__name__,
            "activation": _activation(layer),
            "params": layer.count_params(),
        }
        for layer in model.layers
    ]
    return {"run": {"name": scenario.name, "dtype_policy": scenario.dtype_policy, "layers": layers}, "records": records}


def main() -> None:
    """Record the scenarios named on the command line into this folder."""
    modules = (
        s1_s2_seed_mlp,
        s3_s4_variance_layer,
        s5_deep_sgd,
        s6_saturating_sigmoid,
        s7_mixed_precision,
        s8_alarming_healthy,
    )
    scenarios = {s.name: s for m in modules for s in vars(m).values() if isinstance(s, Scenario)}
    for name in sys.argv[1:]:
        trace = record(scenarios[name])
        path = Path(__file__).with_name(f"{name}.json.gz")
        path.write_bytes(gzip.compress(protocol.dumps(trace, protocol.JSON), mtime=0))


if __name__ == "__main__":
    main()
