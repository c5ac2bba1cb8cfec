"""The service's core, free of HTTP: register runs, ingest step batches, decide and deliver halts.

One ingest request is one store transaction: the records, the acknowledgements, the events they raise,
the halt they trigger and the commands handed back are committed together before the reply leaves. A
detector's halt therefore rides on the reply to the very request that carried the offending record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from nanwatch_service.detectors import Finding
from nanwatch_service.halt import finding_to_halt, halt_reason, is_in_force, new_command, wire_command
from nanwatch_service.run_state import EventKey, RunState, event_from, worsen
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, StoreError


class UnknownRun(LookupError):
    """No run with that id is registered."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} is not registered; PUT /v1/runs/{run_id} first")
        self.run_id = run_id


class Engine:
    """Runs, ingest and halts over a Store, with a per-run in-memory cache of detector state."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._states: dict[str, RunState] = {}
        self._states_lock = threading.Lock()
        self.on_records: Callable[[int], None] = lambda n: None
        self.on_halt: Callable[[str], None] = lambda source: None

    # ------------------------------------------------------------------ runs
    def register(self, run_id: str, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Register or update a run; a halted or finished run that registers again is running again."""
        now = self.clock()
        with self.store.transaction():
            created = self.store.upsert_run(run_id, spec, now)
            row = self.store.get_run(run_id)
            assert row is not None
            if row["status"] in ("halted", "finished"):
                self.store.update_run(run_id, status="running", last_seen=now)
        self._forget(run_id)
        return self.run_view(run_id), created

    def run_view(self, run_id: str) -> dict[str, Any]:
        """What ``GET /v1/runs/{run_id}`` shows."""
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(run_id)
        return self._view(row)

    def list_runs(self, *, status: str | None, team: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Runs, most recently seen first."""
        stale_before = self.clock() - self.settings.stale_after_s
        rows = self.store.list_runs(status=status, team=team, stale_before=stale_before, limit=limit, offset=offset)
        return [self._view(row) for row in rows]

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        spec = row["spec"]
        status = row["status"]
        if status == "running" and self.clock() - row["last_seen"] > self.settings.stale_after_s:
            status = "stale"
        return {
            "run_id": row["run_id"],
            **{k: spec.get(k) for k in ("name", "team", "framework", "dtype_policy", "halt_on")},
            "layers": spec.get("layers", []),
            "status": status,
            "health": row["health"],
            "last_step": row["last_step"],
            "steps_to_nonfinite": row["steps_to_nonfinite"],
            "records": row["records"],
            "dropped": row["dropped"],
            "attempt": row["last_attempt"],
            "created_at": row["created_at"],
            "last_seen": row["last_seen"],
            "halt": row["halt"],
        }

    # ------------------------------------------------------------------ ingest
    def ingest(self, run_id: str, batch: dict[str, Any]) -> dict[str, Any]:
        """Store a batch, run the detectors, apply acks and the halt policy; return the reply."""
        state = self.state(run_id)
        with state.lock:
            try:
                commands = self._ingest_locked(state, batch)
            except StoreError:
                self._forget(run_id)  # the detectors saw records the store did not keep
                raise
        self.on_records(len(batch["records"]))
        return {"accepted": len(batch["records"]), "commands": [wire_command(c) for c in commands]}

    def _ingest_locked(self, state: RunState, batch: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        records = state.unseen(batch["attempt"], batch["records"])
        findings = state.pipeline.process(records) if records else []
        changes = state.tracker.update([r["step"] for r in records], findings)
        with self.store.transaction():
            self.store.insert_steps(state.run_id, batch["attempt"], records, now)
            for ack in batch["acks"]:
                self._acknowledge(state, ack["id"], ack["step"], now)
            self._record_episodes(state, changes, findings)
            recovered = self._record_client_events(state, batch.get("events", []))
            self._apply_policy(state, [f for f in findings if f.step > recovered], records, now)
            state.remember(records)
            state.last_seen = now
            if batch["final"] and state.status == "running":
                state.status = "finished"
            self._save_state(state, batch, len(records), now)
            return self.store.deliverable_commands(state.run_id, now, self.settings.redelivery_s)

    def _save_state(self, state: RunState, batch: dict[str, Any], stored: int, now: float) -> None:
        self.store.count_records(state.run_id, stored=stored, dropped=batch["dropped"])
        self.store.update_run(
            state.run_id,
            last_seen=now,
            last_step=state.last_step,
            status=state.status,
            health=state.health,
            steps_to_nonfinite=state.steps_to_nonfinite,
            last_attempt=batch["attempt"],
        )

    def _record_episodes(self, state: RunState, changes: list[Any], findings: list[Finding]) -> None:
        for change in changes:
            if change.kind == "started" and change.key not in state.open_events:
                self._start_event(state, change.finding)
            elif change.kind == "ended" and change.key in state.open_events:
                event = state.open_events.pop(change.key)
                event.update(state="closed", end_step=change.step)
                self.store.update_event(state.run_id, event["id"], event)
        dirty: set[EventKey] = set()
        for finding in findings:
            key = (finding.detector, finding.layer)
            if key in state.open_events:
                if worsen(state.open_events[key], finding):
                    state.events_total[(finding.detector, finding.severity)] += 1
                dirty.add(key)
        for key in dirty:
            self.store.update_event(state.run_id, state.open_events[key]["id"], state.open_events[key])

    def _start_event(self, state: RunState, finding: Finding) -> None:
        event = event_from(finding)
        event["id"] = self.store.insert_event(state.run_id, event)
        state.open_events[(finding.detector, finding.layer)] = event
        state.events_total[(finding.detector, finding.severity)] += 1

    def _apply_policy(self, state: RunState, findings: list[Finding], records: list[Any], now: float) -> None:
        culprit = finding_to_halt(state.spec.get("halt_on", "critical"), findings)
        if culprit is None or is_in_force(self.store.active_halt(state.run_id), state.status):
            return
        at_step = max(r["step"] for r in records)
        command = new_command(
            reason=halt_reason(culprit), source="detector", step=culprit.step, at_step=at_step, now=now
        )
        self.store.insert_command(state.run_id, command)
        self.on_halt("detector")

    def _record_client_events(self, state: RunState, events: list[dict[str, Any]]) -> int:
        """Store the events the job reported itself (a recovery) as closed ``info`` events of detector
        ``kind``, and count them; return the last step a recovery answered a halt at (-1: none).

        A recovery that answered a halt (``details.command_id``, acknowledged in this batch or an earlier
        one, never a later one) leaves the run running: the job carried on, so the halt is no longer in
        force and the next critical finding can halt it again. Findings at or before that step are on
        records the recovery undid (they come in this batch or earlier ones): they halt nothing.
        """
        recovered = -1
        for event in events:
            doc = {
                "detector": event["kind"], "severity": "info", "layer": None, "state": "closed",
                "step": event["step"], "first_step": event["step"], "last_step": event["step"],
                "end_step": event["step"], "message": event["message"], "details": event["details"],
            }  # fmt: skip
            self.store.insert_event(state.run_id, doc)
            state.events_total[(event["kind"], "info")] += 1
            answered = event["details"].get("command_id")
            halt = self.store.active_halt(state.run_id)
            if answered:
                recovered = max(recovered, event["step"])
            if answered and halt is not None and halt["id"] == answered and state.status == "halted":
                state.status = "running"
                self.store.update_run(state.run_id, status="running", halt=None)
        return recovered

    def _acknowledge(self, state: RunState, command_id: str, step: int, now: float) -> None:
        command = self.store.ack_command(state.run_id, command_id, step, now)
        if command is None or command["action"] != "halt":
            return
        state.status = "halted"
        self.store.update_run(state.run_id, status="halted", halt=_halt_doc(command))

    # ------------------------------------------------------------------ operator halts
    def halt(self, run_id: str, *, reason: str, source: str) -> tuple[dict[str, Any], bool]:
        """Queue a halt for the run's next ingest reply; idempotent while one is in force."""
        now = self.clock()
        with self.store.transaction():
            row = self.store.get_run(run_id)
            if row is None:
                raise UnknownRun(run_id)
            current = self.store.active_halt(run_id)
            if current is not None and is_in_force(current, row["status"]):
                return _public_command(current), False
            at_step = row["last_step"] or 0
            command = new_command(reason=reason, source=source, step=row["last_step"], at_step=at_step, now=now)
            self.store.insert_command(run_id, command)
        self.on_halt(source)
        return _public_command(command), True

    # ------------------------------------------------------------------ cache
    def state(self, run_id: str) -> RunState:
        """The run's in-memory state, loaded from the store on first use."""
        with self._states_lock:
            state = self._states.get(run_id)
        if state is not None:
            return state
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(run_id)
        loaded = RunState.load(self.store, row, horizon=self.settings.horizon, window=self.settings.window)
        with self._states_lock:
            return self._states.setdefault(run_id, loaded)

    def states(self) -> list[RunState]:
        """The runs this replica holds in memory (what its /metrics exports)."""
        with self._states_lock:
            return list(self._states.values())

    def _forget(self, run_id: str) -> None:
        with self._states_lock:
            self._states.pop(run_id, None)


def _halt_doc(command: dict[str, Any]) -> dict[str, Any]:
    return {
        "command_id": command["id"],
        "reason": command["reason"],
        "source": command["source"],
        "step": command["step"],
        "at_step": command["at_step"],
        "acked_step": command["acked_step"],
        "acked_at": command["acked_at"],
    }


def _public_command(command: dict[str, Any]) -> dict[str, Any]:
    return {**wire_command(command), "created_at": command["created_at"], "acked_step": command["acked_step"]}
