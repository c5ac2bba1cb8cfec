"""A replica's in-memory view of one run: detector state, open episodes, commands, and the latest values.

This is a cache. The store holds the truth; a replica that meets a run for the first time rebuilds its
view from the run's last ``window`` records, its open events and its commands (see :meth:`RunState.load`).
Ingest reads and changes it on the event loop only, so a request never waits for a database read.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import numpy as np

from nanwatch.columns import StepColumns
from nanwatch.vocabulary import EventState, Health, RunStatus
from nanwatch_service.detectors import SEVERITY_RANK, EpisodeTracker, Finding, Pipeline, Severity
from nanwatch_service.store import Store
from nanwatch_service.store.chunks import StoredChunk
from nanwatch_service.store.rows import CommandRow, EventRow, RunRow

EventKey = tuple[str, str | None]
TOP_LAYERS: Final = 3
"""Per-layer gradient norms kept for /metrics: the largest few, so a run exports at most this many
per-layer series however deep its model is."""
RECENT_KEYS: Final = 4096
"""Records remembered per run to drop a re-sent batch (a client re-sends at most its last batch, ≤ 512)."""


class RecentKeys:
    """The last ``size`` records of a run by (attempt, step, wall time), as a ring of 64-bit hashes: a
    re-sent batch (its reply was lost; the client delivers at least once) is recognised and stored once.

    A batch whose steps rise and all lie past the highest step seen from its attempt (the usual case)
    holds nothing seen before, and is only remembered.
    """

    def __init__(self, size: int = RECENT_KEYS) -> None:
        self._ring = np.zeros(size, dtype=np.int64)
        self._used = 0
        self._next = 0
        self._highest: dict[str, int] = {}

    def fresh(self, attempt: str, columns: StepColumns) -> np.ndarray:
        """A mask of the records not seen before; remembers them."""
        steps = columns.steps
        keys = self._keys(attempt, columns)
        if len(steps) and steps[0] > self._highest.get(attempt, -1) and (np.diff(steps) > 0).all():
            fresh = np.ones(len(keys), dtype=bool)
        else:
            _, first = np.unique(keys, return_index=True)  # a batch that repeats a record holds it once
            fresh = np.zeros(len(keys), dtype=bool)
            fresh[first] = True
            fresh &= ~np.isin(keys, self._ring[: self._used])
        self._remember(keys[fresh])
        if len(steps):
            self._highest[attempt] = max(self._highest.get(attempt, -1), int(steps.max()))
            while len(self._highest) > 64:  # attempts of a resumed job come one after the other
                del self._highest[next(iter(self._highest))]
        return fresh

    @staticmethod
    def _keys(attempt: str, columns: StepColumns) -> np.ndarray:
        wall, present = columns.scalar("wall_time")
        times = [w if p else None for w, p in zip(wall.tolist(), present.tolist(), strict=True)]
        steps = columns.steps.tolist()
        return np.array([hash((attempt, s, t)) for s, t in zip(steps, times, strict=True)], dtype=np.int64)

    def _remember(self, keys: np.ndarray) -> None:
        size = len(self._ring)
        keys = keys[-size:]
        slots = (self._next + np.arange(len(keys))) % size
        self._ring[slots] = keys
        self._next = (self._next + len(keys)) % size
        self._used = min(size, self._used + len(keys))


@dataclass
class RunState:
    """Everything a replica keeps in memory for one run."""

    run_id: str
    spec: dict[str, Any]
    pipeline: Pipeline
    tracker: EpisodeTracker
    team: str = ""
    status: RunStatus = RunStatus.RUNNING
    last_seen: float = 0.0
    last_step: int | None = None
    loss: float | None = None
    grad_norm: float | None = None
    loss_scale: float | None = None
    top_grad_norms: list[tuple[str, float]] = field(default_factory=list)
    """``(layer, grad_norm)`` of the ``TOP_LAYERS`` layers with the largest gradient norm, largest first."""
    act_max_abs: float | None = None
    """Max |activation| of the layer closest to its dtype's largest value (the least headroom)."""
    act_dtype_max: float | None = None
    """The largest finite value of that layer's compute dtype."""
    open_events: dict[EventKey, EventRow] = field(default_factory=dict)
    events_total: Counter[tuple[str, str]] = field(default_factory=Counter)
    commands: dict[str, CommandRow] = field(default_factory=dict)
    """Commands not yet acknowledged, and the latest halt (acknowledged or not), by id."""
    recent: RecentKeys = field(default_factory=RecentKeys)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while one request of this run is decided, so that the run's requests are taken in order."""
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    """The command channels waiting for this run's next command."""
    forgotten: bool = False
    """The engine dropped this state (the run registered again, was deleted, or a write failed): a request
    that looked it up before then decides against the state that replaces it."""

    def __post_init__(self) -> None:
        layers = self.pipeline.run
        self._layer_names = layers.names
        self._weighted = [i for i, has in enumerate(layers.has_weights) if has]
        self._act_limits = [float(limit) for limit in layers.act_limits]

    @classmethod
    def load(cls, store: Store, row: RunRow, *, horizon: int, window: int) -> RunState:
        """Build the state of a stored run, replaying its recent history into the detectors."""
        spec = row["spec"]
        state = cls(
            run_id=row["run_id"],
            spec=spec,
            pipeline=Pipeline(spec, horizon=horizon, window=window),
            tracker=EpisodeTracker(),
            team=row["team"] or "",
            status=RunStatus(row["status"]),
            last_seen=row["last_seen"],
            last_step=row["last_step"],
        )
        state._replay(store.recent_chunks(row["run_id"], window), window)
        for event in store.list_events(row["run_id"], state=EventState.OPEN, limit=10_000):
            state.open_events[(event["detector"], event["layer"])] = event
        state.tracker.update([], [_finding_of(event) for event in state.open_events.values()])
        latest_halt = store.active_halt(row["run_id"])
        for command in [*([latest_halt] if latest_halt else []), *store.pending_commands(row["run_id"])]:
            state.commands[command["id"]] = command
        return state

    def _replay(self, chunks: list[StoredChunk], window: int) -> None:
        for chunk in chunks:
            self.recent.fresh(chunk.attempt, chunk.columns)
        history = StepColumns.concat([chunk.columns for chunk in chunks], n_layers=self.n_layers)
        history = history.take(slice(max(0, history.n - window), None))
        self.pipeline.warm(history)
        self.remember(history)

    @property
    def n_layers(self) -> int:
        """Entries in each per-layer statistic: the registered layer table's length."""
        return len(self.spec.get("layers", []))

    @property
    def health(self) -> Health:
        """The worst open event's severity (info events do not count)."""
        worst = max((SEVERITY_RANK[e["severity"]] for e in self.open_events.values()), default=0)
        return Health.of_rank(worst)

    @property
    def steps_to_nonfinite(self) -> float:
        """The detectors' current forecast (+inf when nothing is heading to a non-finite value)."""
        return self.pipeline.steps_to_nonfinite

    @property
    def latest_halt(self) -> CommandRow | None:
        """The run's latest halt command, acknowledged or not."""
        halts = [c for c in self.commands.values() if c["action"] == "halt"]
        return max(halts, key=lambda c: c["created_at"], default=None)

    @property
    def overflow_headroom(self) -> float | None:
        """How many times the tightest layer's max |activation| fits below its dtype's limit."""
        if self.act_max_abs is None or self.act_dtype_max is None:
            return None
        return self.act_dtype_max / self.act_max_abs if self.act_max_abs > 0 else math.inf

    def pending_commands(self, known: frozenset[str] = frozenset()) -> list[CommandRow]:
        """Unacknowledged commands, oldest first, but those in ``known``."""
        pending = [c for c in self.commands.values() if c["acked_at"] is None and c["id"] not in known]
        return sorted(pending, key=lambda c: c["created_at"])

    def add_command(self, command: CommandRow) -> None:
        """Hold a new command and wake the channels waiting for one."""
        self.commands[command["id"]] = command
        self.wake()

    def wake(self) -> None:
        """Wake every channel waiting on this run (a command arrived, or this state was replaced)."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def remember(self, columns: StepColumns) -> None:
        """Keep what /metrics exports, from the last record only: a value it lacks keeps the one before."""
        if not columns.n:
            return
        [record] = columns.take(slice(columns.n - 1, None)).records()
        self.last_step = record["step"]
        self.loss = record.get("loss", self.loss)
        self.grad_norm = record.get("grad_norm", self.grad_norm)
        self.loss_scale = record.get("loss_scale", self.loss_scale)
        layers = record.get("layers") or {}
        if "grad_norm" in layers:
            self.top_grad_norms = self._largest_grad_norms(layers["grad_norm"])
        if "act_max_abs" in layers:
            self._remember_tightest_activation(layers["act_max_abs"])

    def _largest_grad_norms(self, norms: Sequence[float]) -> list[tuple[str, float]]:
        # A NaN norm is the most interesting of all: it ranks first.
        top = heapq.nlargest(TOP_LAYERS, self._weighted, key=lambda i: norms[i] if norms[i] == norms[i] else math.inf)
        return [(self._layer_names[i], norms[i]) for i in top]

    def _remember_tightest_activation(self, max_abs: Sequence[float]) -> None:
        # NaN (not measured on this step) and 0 (nothing to overflow) are left out; with no layer left, the
        # last measurement stays.
        measured = [i for i, value in enumerate(max_abs) if value > 0]
        if measured:
            tightest = max(measured, key=lambda i: max_abs[i] / self._act_limits[i])
            self.act_max_abs, self.act_dtype_max = max_abs[tightest], self._act_limits[tightest]

    def exported(self, now: float, stale_after_s: float) -> bool:
        """Whether Prometheus should see this run: not finished and not silent."""
        return self.status != RunStatus.FINISHED and now - self.last_seen <= stale_after_s


def event_from(finding: Finding) -> EventRow:
    """A new open event from the finding that started its episode. ``severity_steps`` records the step
    at which the episode first reached each severity (a warning that turns critical keeps both)."""
    return {
        "detector": finding.detector,
        "severity": finding.severity,
        "layer": finding.layer,
        "state": EventState.OPEN,
        "step": finding.step,
        "first_step": finding.step,
        "last_step": finding.step,
        "end_step": None,
        "value": finding.value,
        "threshold": finding.threshold,
        "message": finding.message,
        "remedy": finding.remedy,
        "steps_to_nonfinite": _forecast(finding),
        "severity_steps": {finding.severity: finding.step},
    }


def snapshot(event: EventRow) -> EventRow:
    """An event's fields as they are now, for the store (the live dict keeps changing)."""
    copied = event.copy()
    copied.pop("id", None)
    copied["severity_steps"] = dict(event.get("severity_steps", {}))
    return copied


def worsen(event: EventRow, finding: Finding) -> bool:
    """Fold a later finding of the same episode into its event; True when the severity rose."""
    rose = SEVERITY_RANK[finding.severity] > SEVERITY_RANK[event["severity"]]
    if rose:
        event["severity"] = finding.severity
        event.setdefault("severity_steps", {})[finding.severity] = finding.step
    event["last_step"] = max(event["last_step"], finding.step)
    event["value"], event["threshold"] = finding.value, finding.threshold
    event["message"], event["remedy"] = finding.message, finding.remedy
    event["steps_to_nonfinite"] = _forecast(finding)
    return rose


def _finding_of(event: EventRow) -> Finding:
    """The finding an open event stands for, to reopen its episode in a fresh tracker (an open event is a
    detector's: it has a value and a threshold)."""
    return Finding(
        detector=event["detector"],
        severity=Severity(event["severity"]),
        step=event["last_step"],
        layer=event["layer"],
        value=cast(float, event["value"]),
        threshold=cast(float, event["threshold"]),
        message=event["message"],
        remedy=event["remedy"],
        steps_to_nonfinite=event.get("steps_to_nonfinite"),
    )


def _forecast(finding: Finding) -> float | None:
    value = finding.steps_to_nonfinite
    return None if value is None or math.isnan(value) else value
