"""Throughput of the detection pipeline against a naive per-record Python loop over the same checks.

    .venv/bin/python bench/detector_throughput.py [--layers 64] [--records 5000] [--batch 250] [--repeat 5]

All run in this process, one core, interleaved, on the same records: a healthy run and one whose gradients
diverge. The Pipeline is timed the way the service meets a request, from the msgpack body on: protocol 2
(packed columns, viewed with ``numpy.frombuffer``) and protocol 1 (records as maps of Python floats,
converted to columns once). The naive loop gets the records already decoded. Prints the median
records/s of each and the ratios.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nanwatch import protocol
from nanwatch_service.detectors import Pipeline

Record = Mapping[str, Any]


def make_run(n_layers: int) -> dict[str, Any]:
    """A decoded registration: Dense/ReLU blocks with a weightless Dropout every fourth layer, sigmoid out."""
    layers = []
    for i in range(n_layers):
        if i == n_layers - 1:
            layers.append({"name": f"out_{i}", "kind": "Dense", "activation": "sigmoid", "params": 129})
        elif i % 4 == 3:
            layers.append({"name": f"dropout_{i}", "kind": "Dropout", "activation": None, "params": 0})
        else:
            layers.append({"name": f"dense_{i}", "kind": "Dense", "activation": "relu", "params": 16512})
    run: dict[str, Any] = protocol.decode_run({"name": "bench", "dtype_policy": "float32", "layers": layers})
    return run


def make_records(run: Mapping[str, Any], n: int, *, diverge_at: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """Noisy healthy records; from ``diverge_at`` on, gradients and activations grow ×1.6 per step."""
    rng = random.Random(seed)
    weighted = [layer["params"] > 0 for layer in run["layers"]]
    raw = [_record(step, weighted, rng, _growth(step, diverge_at)) for step in range(n)]
    body = protocol.dumps({"records": raw})
    return list(protocol.decode_batch(protocol.loads(body), len(weighted))["records"])


def _growth(step: int, diverge_at: int | None) -> float:
    return 1.0 if diverge_at is None or step < diverge_at else 1.6 ** min(step - diverge_at, 140)


def _record(step: int, weighted: list[bool], rng: random.Random, growth: float) -> dict[str, Any]:
    def per_layer(center: float, spread: float, weights_only: bool = False) -> list[float]:
        return [0.0 if weights_only and not w else center * growth * math.exp(rng.gauss(0.0, spread)) for w in weighted]

    layers = {
        "grad_norm": per_layer(0.05, 0.2, True),
        "grad_mean_abs": per_layer(1e-4, 0.2, True),
        "weight_norm": per_layer(10.0, 0.01, True),
        "update_norm": per_layer(0.01, 0.2, True),
        "act_mean": per_layer(0.3, 0.1),
        "act_std": per_layer(0.5, 0.1),
        "act_max_abs": [*per_layer(4.0, 0.2)[:-1], 0.9],  # the sigmoid output: a probability
        "act_frac_zero": [*(rng.uniform(0.4, 0.6) for _ in weighted[:-1]), 0.0],  # ReLUs, then the sigmoid
        "act_frac_nonfinite": [0.0 for _ in weighted],
        "act_frac_saturated": [0.0 for _ in weighted],
        "act_frac_zero_var": [0.0 for _ in weighted],
        "in_max_abs": per_layer(4.0, 0.2),
    }
    loss = 0.7 * growth * math.exp(rng.gauss(0.0, 0.1))
    return {
        "step": step,
        "loss": loss,
        "lr": 1e-3,
        "grad_norm": 0.3 * growth * math.exp(rng.gauss(0, 0.2)),
        "layers": layers,
    }


# --------------------------------------------------------------------------- the naive baseline


class NaiveDetector:
    """The same checks written the obvious way: one record and one layer at a time, in plain Python."""

    def __init__(self, run: Mapping[str, Any], window: int = 128) -> None:
        self.layers = run["layers"]
        self.losses: deque[float] = deque(maxlen=window)
        self.grads: deque[float] = deque(maxlen=window)
        self.prev_weight: list[float] | None = None

    def process(self, records: Sequence[Record]) -> list[tuple[str, int, str | None]]:
        """Findings as (detector, step, layer) tuples."""
        found: list[tuple[str, int, str | None]] = []
        for record in records:
            found += self._record(record)
        return found

    def _record(self, record: Record) -> list[tuple[str, int, str | None]]:
        step: int = record["step"]
        found: list[tuple[str, int, str | None]] = []
        loss, grad = record.get("loss"), record.get("grad_norm")
        if loss is not None and not math.isfinite(loss):
            found.append(("nonfinite", step, None))
        if loss is not None and _z(self.losses, loss) > 6:
            found.append(("loss_spike", step, None))
        if grad is not None and grad > 0 and _z(self.grads, math.log(grad)) > 6:
            found.append(("grad_explosion", step, None))
        for name, stats in self._layers(record):
            found += [(check, step, name) for check in _layer_checks(stats, self.prev_weight)]
        self.prev_weight = record["layers"].get("weight_norm")
        if loss is not None and math.isfinite(loss):
            self.losses.append(loss)
        if grad is not None and grad > 0 and math.isfinite(grad):
            self.grads.append(math.log(grad))
        return found

    def _layers(self, record: Record) -> list[tuple[str, dict[str, Any]]]:
        arrays = record.get("layers") or {}
        return [
            (layer["name"], {"index": i, "layer": layer, **{k: v[i] for k, v in arrays.items()}})
            for i, layer in enumerate(self.layers)
        ]


def _z(history: deque[float], value: float) -> float:
    if len(history) < 20:
        return 0.0
    median = statistics.median(history)
    mad = statistics.median(abs(v - median) for v in history)
    return (value - median) / max(1.4826 * mad, 0.1)


def _layer_checks(stats: dict[str, Any], prev_weight: list[float] | None) -> list[str]:
    layer, checks = stats["layer"], []
    if stats["act_frac_nonfinite"] > 0 or not math.isfinite(stats["act_max_abs"]):
        checks.append("nonfinite")
    if stats["act_max_abs"] > 3.4e38 / 100:
        checks.append("overflow_headroom")
    if stats["in_max_abs"] > 0 and stats["act_max_abs"] > 100 and stats["act_max_abs"] / stats["in_max_abs"] > 1e4:
        checks.append("amplification")
    if 0 < stats["act_frac_zero_var"] < 1:
        checks.append("zero_variance")
    if layer["activation"] in ("sigmoid", "tanh", "softmax") and stats["act_frac_saturated"] > 0.5:
        checks.append("saturation")
    if layer["activation"] == "relu" and stats["act_frac_zero"] > 0.9:
        checks.append("dead_relu")
    if layer["params"] > 0:
        checks += _weight_checks(stats, prev_weight)
    return checks


def _weight_checks(stats: dict[str, Any], prev_weight: list[float] | None) -> list[str]:
    checks = []
    if stats["grad_mean_abs"] < 1e-7:
        checks.append("vanishing_gradient")
    before = prev_weight[stats["index"]] if prev_weight else stats["weight_norm"]
    if before > 0 and stats["update_norm"] / before > 1:
        checks.append("update_ratio")
    return checks


# --------------------------------------------------------------------------- timing


def time_naive(run: Mapping[str, Any], records: list[dict[str, Any]], batch: int) -> float:
    """Seconds to push decoded ``records`` through a fresh naive detector in batches of ``batch``."""
    detector = NaiveDetector(run)
    start = time.perf_counter()
    for i in range(0, len(records), batch):
        detector.process(records[i : i + batch])
    return time.perf_counter() - start


def time_pipeline(run: Mapping[str, Any], bodies: list[bytes]) -> float:
    """Seconds to decode each msgpack body and push its records through a fresh Pipeline."""
    pipeline = Pipeline(run)
    n_layers = len(run["layers"])
    start = time.perf_counter()
    for body in bodies:
        pipeline.process(protocol.decode_steps(protocol.loads(body), n_layers).columns)
    return time.perf_counter() - start


def bodies(records: list[dict[str, Any]], batch: int, version: int) -> list[bytes]:
    """The records as request bodies of ``batch`` records in protocol ``version`` (msgpack)."""
    chunks = [records[i : i + batch] for i in range(0, len(records), batch)]
    if version == 2:
        return [protocol.encode_batch(chunk, attempt="bench")[0] for chunk in chunks]
    return [protocol.dumps({"protocol": 1, "attempt": "bench", "records": chunk}) for chunk in chunks]


def main() -> None:
    """Run the benchmark and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run = make_run(args.layers)
    cases = {
        "healthy": make_records(run, args.records, diverge_at=None),
        "diverging": make_records(run, args.records, diverge_at=args.records // 2),
    }
    print(f"{args.layers} layers, {args.records} records in batches of {args.batch}, {args.repeat} repetitions")
    for case, records in cases.items():
        contenders: dict[str, Callable[[], float]] = {
            "naive loop": functools.partial(time_naive, run, records, args.batch),
            "Pipeline, protocol 1": functools.partial(time_pipeline, run, bodies(records, args.batch, 1)),
            "Pipeline, protocol 2": functools.partial(time_pipeline, run, bodies(records, args.batch, 2)),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeat):
            for name, timed in contenders.items():
                times[name].append(timed())
        rates = {name: args.records / statistics.median(t) for name, t in times.items()}
        for name, rate in rates.items():
            print(f"  {case:9s} {name:22s} {rate:10,.0f} records/s (median)")
        for name in ("Pipeline, protocol 2", "Pipeline, protocol 1"):
            print(f"  {case:9s} {name} / naive loop: {rates[name] / rates['naive loop']:.1f}×")


if __name__ == "__main__":
    main()
