"""Prometheus metrics: run-level series written straight as exposition text, service series from plain metrics.

Run series carry only ``run_id`` and ``team``; the per-layer gradient norms add ``layer`` for the
``TOP_LAYERS`` largest of a run only, so no model exports a series per layer. A value a run never sent (a
loss scale outside mixed precision) has no sample. A run that finished or has been silent longer than
``NANWATCH_STALE_AFTER_S`` is left out, so Prometheus marks its series stale.

Why not a ``prometheus_client`` Collector: ``generate_latest`` builds an object per sample and escapes
every label of it on every scrape, about 0.6 s for 10,000 runs before the loss-scale, headroom and layer
series; here each run's labels are escaped once per scrape and its values formatted straight into lines
(``bench/metrics_scrape.py``). The service's own counters and histograms stay in a ``CollectorRegistry``.
This is one process per replica: prometheus_client's multiprocess mode would not see the runs either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from nanwatch.vocabulary import Health, RunStatus
from nanwatch_service.engine import Engine
from nanwatch_service.run_state import RunState

_HEALTH: Final = {Health.OK: 0, Health.WARNING: 1, Health.CRITICAL: 2}

RUN_GAUGES: Final[tuple[tuple[str, str, Callable[[RunState], float | None]], ...]] = (
    ("nanwatch_run_loss", "Latest per-batch loss.", lambda run: run.loss),
    ("nanwatch_run_grad_norm", "Latest global gradient norm.", lambda run: run.grad_norm),
    ("nanwatch_run_step", "Latest step received.", lambda run: run.last_step),
    ("nanwatch_run_health", "0 ok, 1 warning, 2 critical.", lambda run: _HEALTH[run.health]),
    ("nanwatch_run_halted", "1 once the job acknowledged a halt.", lambda run: run.status == RunStatus.HALTED),
    (
        "nanwatch_run_steps_to_nonfinite",
        "Forecast steps until a non-finite value; +Inf when none.",
        lambda run: run.steps_to_nonfinite,
    ),
    ("nanwatch_run_loss_scale", "Latest mixed-precision loss scale.", lambda run: run.loss_scale),
    (
        "nanwatch_run_act_max_abs",
        "Max |activation| of the layer closest to its dtype's largest value.",
        lambda run: run.act_max_abs,
    ),
    (
        "nanwatch_run_act_dtype_max",
        "Largest finite value of that layer's compute dtype (65504 for float16).",
        lambda run: run.act_dtype_max,
    ),
    (
        "nanwatch_run_overflow_headroom",
        "How many times that layer's max |activation| fits below its dtype's largest value.",
        lambda run: run.overflow_headroom,
    ),
)
"""Name, help and value of each per-run gauge (None: no sample)."""


def render_runs(runs: Sequence[RunState]) -> str:
    """The exposition text of the run families for ``runs``."""
    labelled = [(run, f'run_id="{run.run_id}",team="{_escape(run.team)}"') for run in runs]
    lines: list[str] = []
    for name, help_text, value_of in RUN_GAUGES:
        lines.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
        for run, labels in labelled:
            value = value_of(run)
            if value is not None:
                lines.append(f"{name}{{{labels}}} {_number(value)}\n")
    name = "nanwatch_run_layer_grad_norm"
    lines.append(f"# HELP {name} Gradient norm of the run's largest layers (at most a few per run).\n")
    lines.append(f"# TYPE {name} gauge\n")
    for run, labels in labelled:
        for layer, norm in run.top_grad_norms:
            lines.append(f'{name}{{{labels},layer="{_escape(layer)}"}} {_number(norm)}\n')
    name = "nanwatch_events_total"
    lines.append(f"# HELP {name} Episodes of a finding, by detector and severity.\n# TYPE {name} counter\n")
    for run, labels in labelled:
        for (detector, severity), count in sorted(run.events_total.items()):
            lines.append(f'{name}{{{labels},detector="{detector}",severity="{severity}"}} {_number(count)}\n')
    lines.append("# HELP nanwatch_active_runs Runs exported by this replica.\n# TYPE nanwatch_active_runs gauge\n")
    lines.append(f"nanwatch_active_runs {_number(len(runs))}\n")
    return "".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class ServiceMetrics:
    """The service's own metrics, in a registry of their own (a fresh one per app), and the runs' series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records = Counter("nanwatch_ingest_records", "Step records accepted.", registry=registry)
        self.duration = Histogram(
            "nanwatch_ingest_request_duration_seconds",
            "Time to handle an ingest request, decoding to reply.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.commits = Histogram(
            "nanwatch_store_commit_duration_seconds",
            "Time of an ingest's store transaction, its writes and the commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.halts = Counter("nanwatch_halts", "Halts issued, by source.", ["source"], registry=registry)
        for source in ("detector", "operator", "alertmanager"):
            self.halts.labels(source=source)
        self._engine: Engine | None = None

    def observe_ingest(self, seconds: float) -> None:
        """Record one ingest request's duration."""
        self.duration.observe(seconds)

    def observe_commit(self, seconds: float) -> None:
        """Record one store transaction's duration."""
        self.commits.observe(seconds)

    def attach(self, engine: Engine) -> None:
        """Count what the engine accepts, commits and halts, and export its runs."""
        engine.on_records = self.records.inc
        engine.on_halt = lambda source: self.halts.labels(source=source).inc()
        engine.on_commit = self.observe_commit
        self._engine = engine

    def exported_runs(self) -> list[RunState]:
        """The attached engine's runs that Prometheus should see: neither finished nor silent."""
        if self._engine is None:
            return []
        now, stale_after_s = self._engine.clock(), self._engine.settings.stale_after_s
        return [run for run in self._engine.states() if run.exported(now, stale_after_s)]

    def render(self) -> bytes:
        """The whole /metrics body."""
        return generate_latest(self.registry) + render_runs(self.exported_runs()).encode()
