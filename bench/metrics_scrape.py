"""Time to render /metrics for many active runs: nanwatch's run exposition against prometheus_client's.

    .venv/bin/python bench/metrics_scrape.py [--runs 10000] [--layers 8] [--repeat 5]

Builds ``--runs`` runs in one Engine on an in-memory SQLite store, each registered and fed one step
through the real ingest path (a mixed_float16 run with a loss scale and per-layer statistics, so every
run family has a sample), then renders the whole /metrics body, interleaved, ``--repeat`` times each:

- baseline: the same series from a ``prometheus_client`` Collector (``GaugeMetricFamily`` per family,
  ``generate_latest``), which is how the service rendered runs before issue 15;
- ours: ``ServiceMetrics.render()``, what ``GET /metrics`` returns.

Both bodies are parsed once and must hold the same samples. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from nanwatch import protocol
from nanwatch_service.engine import Engine
from nanwatch_service.metrics import RUN_GAUGES, ServiceMetrics
from nanwatch_service.settings import Settings
from nanwatch_service.store.sqlite import SqliteStore

_LABELS = ("run_id", "team")


class ClientCollector:
    """The baseline: the run families as prometheus_client metric families."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        runs = self._metrics.exported_runs()
        for name, help_text, value_of in RUN_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=_LABELS)
            for run in runs:
                value = value_of(run)
                if value is not None:
                    family.add_metric([run.run_id, run.team], float(value))
            yield family
        layers = GaugeMetricFamily("nanwatch_run_layer_grad_norm", "Layer norms.", labels=(*_LABELS, "layer"))
        events = CounterMetricFamily("nanwatch_events_total", "Episodes.", labels=(*_LABELS, "detector", "severity"))
        for run in runs:
            for layer, norm in run.top_grad_norms:
                layers.add_metric([run.run_id, run.team, layer], norm)
            for (detector, severity), count in sorted(run.events_total.items()):
                events.add_metric([run.run_id, run.team, detector, severity], count)
        yield layers
        yield events
        active = GaugeMetricFamily("nanwatch_active_runs", "Runs exported by this replica.")
        active.add_metric([], len(runs))
        yield active


def build(n_runs: int, n_layers: int) -> ServiceMetrics:
    """An engine holding ``n_runs`` active runs, each fed one step, and the service metrics over it."""
    return asyncio.run(_build(n_runs, n_layers))


async def _build(n_runs: int, n_layers: int) -> ServiceMetrics:
    engine = Engine(SqliteStore(":memory:"), Settings())
    metrics = ServiceMetrics(CollectorRegistry())
    metrics.attach(engine)
    engine.start()
    layers = [
        {"name": f"dense_{i}", "kind": "Dense", "activation": "relu", "params": 4160, "dtype": "float16"}
        for i in range(n_layers)
    ]
    try:
        for i in range(n_runs):
            run_id = f"run-{i:05d}"
            spec = {"name": run_id, "team": f"team-{i % 25}", "dtype_policy": "mixed_float16", "layers": layers}
            engine.register(run_id, protocol.decode_run(spec))
            await engine.ingest(await engine.state(run_id), {"records": [_record(i, n_layers)]})
    finally:
        engine.close()
    return metrics


def _record(i: int, n_layers: int) -> dict[str, Any]:
    stats = {"grad_norm": [0.1 + 0.01 * ((i + j) % 7) for j in range(n_layers)]}
    stats["act_max_abs"] = [1.0 + j for j in range(n_layers)]
    return {"step": i, "loss": 0.5, "grad_norm": 1.25, "loss_scale": 32768.0, "layers": stats}


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every run-level sample of a /metrics body (the service's own series left out)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith(("nanwatch_run_", "nanwatch_events", "nanwatch_active"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    metrics = build(args.runs, args.layers)
    print(f"{args.runs} runs of {args.layers} layers built in {time.perf_counter() - started:.1f} s")
    baseline = CollectorRegistry()
    baseline.register(ClientCollector(metrics))
    ours_body, base_body = metrics.render(), generate_latest(baseline)
    assert samples(ours_body) == samples(base_body), "the two renderings disagree"
    print(f"{len(samples(ours_body))} run samples, body {len(ours_body) / 1e6:.1f} MB")

    times: dict[str, list[float]] = {"prometheus_client": [], "nanwatch": []}
    for _ in range(args.repeat):
        for name, render in (("prometheus_client", lambda: generate_latest(baseline)), ("nanwatch", metrics.render)):
            t0 = time.perf_counter()
            render()
            times[name].append(time.perf_counter() - t0)
    base, ours = statistics.median(times["prometheus_client"]), statistics.median(times["nanwatch"])
    print(f"baseline prometheus_client generate_latest (runs only): median {base:.3f} s")
    print(f"nanwatch ServiceMetrics.render (whole /metrics body):   median {ours:.3f} s")
    print(f"ratio {base / ours:.1f}x; {args.runs} runs under 1 s: {'yes' if ours < 1.0 else 'NO'}")


if __name__ == "__main__":
    main()
