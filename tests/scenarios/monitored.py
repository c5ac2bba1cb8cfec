"""A scenario run under a watcher — nanwatch against a real service, or TerminateOnNaN — and what it saw.

Shared by the end-to-end detection tests and ``bench/detection.py``, so both judge the same runs.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import keras

from nanwatch.keras import NanWatchCallback
from tests.scenarios import SCENARIOS, run_scenario

WARNING_OR_WORSE = ("warning", "critical")


@dataclass
class Outcome:
    """When a watcher warned, went critical and stopped a scenario, and whether the weights were finite."""

    scenario: str
    watcher: str
    first_nonfinite: int | None  # measured unmonitored
    first_warning: int | None = None
    first_critical: int | None = None
    stopped_at: int | None = None  # the step the job stopped at, None when it ran to the end
    weights_finite_at_stop: bool = True
    events: list[dict[str, Any]] = field(default_factory=list)  # warning and critical events
    recoveries: list[dict[str, Any]] = field(default_factory=list)  # the run's recovery events (recover=True)
    steps_run: int = 0
    losses: list[float] = field(default_factory=list)
    status: str = ""  # the run's status at the service once the job ended

    @property
    def false_warnings(self) -> int:
        """Warnings on a scenario that never goes non-finite and is not S4 (whose amplification is real)."""
        healthy = not SCENARIOS[self.scenario].diverges and self.scenario != "S4"
        return len(self.events) if healthy else 0

    @property
    def lead(self) -> int | None:
        """Steps between the first warning and the first non-finite value (unmonitored)."""
        if self.first_warning is None or self.first_nonfinite is None:
            return None
        return self.first_nonfinite - self.first_warning


def run_with_nanwatch(name: str, url: str, every_epoch: bool = False, **callback_kwargs: Any) -> Outcome:
    """Run scenario ``name`` with NanWatchCallback in lockstep against the service at ``url`` (for all its
    epochs with ``every_epoch``)."""
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    callback_kwargs.setdefault("lockstep", True)
    callback = NanWatchCallback(url, run_id=run_id, flush_interval=0.05, **callback_kwargs)
    result = run_scenario(name, [callback], every_epoch=every_epoch)
    with httpx.Client(base_url=url, timeout=30) as client:
        events = client.get(f"/v1/runs/{run_id}/events").json()["events"]
        status = client.get(f"/v1/runs/{run_id}").json()["status"]
    serious = [e for e in events if e["severity"] in WARNING_OR_WORSE]
    return Outcome(
        scenario=name,
        watcher="nanwatch",
        first_nonfinite=SCENARIOS[name].expected_first_nonfinite,
        first_warning=_first(serious, WARNING_OR_WORSE),
        first_critical=_first(serious, ("critical",)),
        stopped_at=callback.halted.step if callback.halted else None,
        weights_finite_at_stop=result.weights_finite_at_end,
        events=serious,
        recoveries=[e for e in events if e["detector"] == "recovery"],
        steps_run=result.steps_run,
        losses=result.losses,
        status=status,
    )


def run_with_terminate_on_nan(name: str) -> Outcome:
    """The baseline: Keras' TerminateOnNaN, which acts on a NaN/Inf loss only."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its verdict itself
        result = run_scenario(name, [keras.callbacks.TerminateOnNaN()])
    stopped = result.steps_run - 1 if result.steps_run < SCENARIOS[name].max_steps else None
    return Outcome(
        scenario=name,
        watcher="TerminateOnNaN",
        first_nonfinite=SCENARIOS[name].expected_first_nonfinite,
        first_warning=stopped,
        first_critical=stopped,
        stopped_at=stopped,
        weights_finite_at_stop=result.weights_finite_at_end,
    )


def _first(events: list[dict[str, Any]], severities: tuple[str, ...]) -> int | None:
    steps = [step for e in events for sev, step in e.get("severity_steps", {}).items() if sev in severities]
    return min(steps, default=None)
