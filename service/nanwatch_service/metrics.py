"""Prometheus metrics: run-level series from a custom Collector, service series from plain metrics.

Run series carry only ``run_id`` and ``team`` (no per-step or per-layer labels). A run that finished or
fell silent is no longer exported, so Prometheus marks its series stale. Each replica exports the runs
it ingests; this is one process per replica, since prometheus_client's multiprocess mode would disable
the custom collector.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nanwatch_service.engine import Engine

_HEALTH = {"ok": 0.0, "warning": 1.0, "critical": 2.0}
_RUN_LABELS = ("run_id", "team")


class RunCollector(Collector):
    """Exports the latest values of every active run held by an Engine."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        """Build the run families from the engine's in-memory run states."""
        now = self._clock()
        states = [s for s in self._engine.states() if s.exported(now, self._engine.settings.stale_after_s)]
        families = {
            "loss": GaugeMetricFamily("nanwatch_run_loss", "Latest per-batch loss.", labels=_RUN_LABELS),
            "grad_norm": GaugeMetricFamily(
                "nanwatch_run_grad_norm", "Latest global gradient norm.", labels=_RUN_LABELS
            ),
            "step": GaugeMetricFamily("nanwatch_run_step", "Latest step received.", labels=_RUN_LABELS),
            "health": GaugeMetricFamily("nanwatch_run_health", "0 ok, 1 warning, 2 critical.", labels=_RUN_LABELS),
            "halted": GaugeMetricFamily(
                "nanwatch_run_halted", "1 once the job acknowledged a halt.", labels=_RUN_LABELS
            ),
            "forecast": GaugeMetricFamily(
                "nanwatch_run_steps_to_nonfinite",
                "Forecast steps until a non-finite value; +Inf when none.",
                labels=_RUN_LABELS,
            ),
        }
        events = CounterMetricFamily(
            "nanwatch_events_total",
            "Episodes of a finding, by detector and severity.",
            labels=(*_RUN_LABELS, "detector", "severity"),
        )
        for state in states:
            labels = [state.run_id, state.team]
            values = {
                "loss": _or_nan(state.loss),
                "grad_norm": _or_nan(state.grad_norm),
                "step": _or_nan(state.last_step),
                "health": _HEALTH[state.health],
                "halted": 1.0 if state.status == "halted" else 0.0,
                "forecast": state.steps_to_nonfinite,
            }
            for name, value in values.items():
                families[name].add_metric(labels, value)
            for (detector, severity), count in sorted(state.events_total.items()):
                events.add_metric([*labels, detector, severity], count)
        yield from families.values()
        yield events
        active = GaugeMetricFamily("nanwatch_active_runs", "Runs exported by this replica.")
        active.add_metric([], len(states))
        yield active


def _or_nan(value: float | int | None) -> float:
    return math.nan if value is None else float(value)


class ServiceMetrics:
    """The service's own metrics, in a registry of their own (a fresh one per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records = Counter("nanwatch_ingest_records", "Step records accepted.", registry=registry)
        self.duration = Histogram(
            "nanwatch_ingest_request_duration_seconds",
            "Time to handle an ingest request, decoding to reply.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.halts = Counter("nanwatch_halts", "Halts issued, by source.", ["source"], registry=registry)
        for source in ("detector", "operator", "alertmanager"):
            self.halts.labels(source=source)

    def observe_ingest(self, seconds: float) -> None:
        """Record one ingest request's duration."""
        self.duration.observe(seconds)

    def attach(self, engine: Engine) -> None:
        """Count what the engine accepts and halts, and export its runs."""
        engine.on_records = self.records.inc
        engine.on_halt = lambda source: self.halts.labels(source=source).inc()
        self.registry.register(RunCollector(engine, engine.clock))
