"""The service's core, free of HTTP: register runs, ingest step batches, decide and deliver halts.

An ingest request is decided on the event loop from the run's in-memory state (:class:`RunState`), without
a database read: the batch is decoded into columns, re-sent records dropped, the detectors run over the
whole batch, episodes opened and closed, acknowledgements and the halt policy applied, and the commands
due picked. What that decided is one :class:`IngestWrite`, handed to the group committer; the reply leaves
once its transaction is committed. A detector's halt therefore rides on the reply to the very request that
carried the offending record, and every acknowledged record is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from starlette.concurrency import run_in_threadpool

from nanwatch import protocol
from nanwatch.columns import StepColumns
from nanwatch.vocabulary import EventState, HaltPolicy, HaltState, RunStatus
from nanwatch_service.auth import ANONYMOUS, Caller
from nanwatch_service.committer import GroupCommitter
from nanwatch_service.detectors import EpisodeChange, Finding, Severity
from nanwatch_service.halt import finding_to_halt, halt_reason, is_in_force, new_command, wire_command
from nanwatch_service.run_state import EventKey, RunState, event_from, snapshot, worsen
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, StoreError
from nanwatch_service.store.base import IngestWrite, RunProgress
from nanwatch_service.store.rows import CommandRow, EventRow, RunCommandRow, RunHalt, RunRow


class UnknownRun(LookupError):
    """No run with that id is registered, or none the caller may see (the two read the same)."""

    def __init__(self, run_id: str, message: str | None = None) -> None:
        super().__init__(message or f"run {run_id!r} is not registered; PUT /v1/runs/{run_id} first")
        self.run_id = run_id


class RunTaken(UnknownRun):
    """A registration names a run id that another team's run already holds."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, f"run id {run_id!r} is taken by a run you cannot see; choose another run_id")


class TeamFull(Exception):
    """A team already holds as many runs as ``max_runs_per_team`` allows."""

    def __init__(self, team: str | None, limit: int) -> None:
        super().__init__(f"team {team!r} already holds {limit} runs; delete finished runs or raise the limit")
        self.team, self.limit = team, limit


class Engine:
    """Runs, ingest and halts over a Store, with a per-run in-memory cache of detector state."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._states: dict[str, RunState] = {}
        self._states_lock = threading.Lock()
        self._loading: dict[str, asyncio.Future[RunState]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._releasing = False
        self.on_records: Callable[[int], None] = lambda n: None
        self.on_halt: Callable[[str], None] = lambda source: None
        self.on_commit: Callable[[float], None] = lambda seconds: None
        """Called with the seconds each group commit took, writes and commit (the store latency)."""
        self.committer = GroupCommitter(store, on_commit=lambda seconds: self.on_commit(seconds))

    def start(self) -> None:
        """Start writing (the app's lifespan calls it, on the event loop that serves the requests)."""
        self._loop = asyncio.get_running_loop()
        self.committer.start()

    def close(self) -> None:
        """Write what is queued and stop writing."""
        self.committer.close()

    # ------------------------------------------------------------------ runs
    def register(self, run_id: str, spec: dict[str, Any], caller: Caller = ANONYMOUS) -> tuple[dict[str, Any], bool]:
        """Register or update a run for ``caller``; a halted or finished run that registers again is running
        again. The run belongs to the caller's team (see :meth:`Caller.owner_of_new_run`); another team's
        run id raises :class:`RunTaken`, a new run beyond ``max_runs_per_team`` :class:`TeamFull`."""
        now = self.clock()
        spec = {**spec, "team": caller.owner_of_new_run(spec.get("team"))}
        with self.store.transaction():
            existing = self.store.get_run(run_id)
            if existing is not None and not caller.can_see(existing["team"]):
                raise RunTaken(run_id)
            if existing is None and self.store.count_runs(spec["team"]) >= self.settings.max_runs_per_team:
                raise TeamFull(spec["team"], self.settings.max_runs_per_team)
            created = self.store.upsert_run(run_id, spec, now)
            if existing is not None and existing["status"] in (RunStatus.HALTED, RunStatus.FINISHED):
                self.store.update_run(run_id, status=RunStatus.RUNNING, last_seen=now)
        self.forget(run_id)
        return self.run_view(run_id), created

    def delete(self, run_id: str) -> None:
        """Delete a run with its history, events and commands (UnknownRun when there is none)."""
        with self.store.transaction():
            if not self.store.delete_run(run_id):
                raise UnknownRun(run_id)
        self.forget(run_id)

    async def team_of(self, run_id: str) -> str | None:
        """The team that owns the run (from memory when this replica holds it); UnknownRun when none does."""
        with self._states_lock:
            state = self._states.get(run_id)
        if state is not None:
            return state.team or None
        row = await run_in_threadpool(self.store.get_run, run_id)
        if row is None:
            raise UnknownRun(run_id)
        team: str | None = row["team"]
        return team

    def run_view(self, run_id: str) -> dict[str, Any]:
        """What ``GET /v1/runs/{run_id}`` shows."""
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(run_id)
        return self._view(row, self.store.pending_halts([run_id]).get(run_id))

    def list_runs(self, *, status: str | None, team: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Runs, most recently seen first."""
        stale_before = self.clock() - self.settings.stale_after_s
        rows = self.store.list_runs(status=status, team=team, stale_before=stale_before, limit=limit, offset=offset)
        pending = self.store.pending_halts([row["run_id"] for row in rows]) if rows else {}
        return [self._view(row, pending.get(row["run_id"])) for row in rows]

    def _view(self, row: RunRow, pending_halt: CommandRow | None) -> dict[str, Any]:
        spec = row["spec"]
        status = row["status"]
        if status == RunStatus.RUNNING and self.clock() - row["last_seen"] > self.settings.stale_after_s:
            status = RunStatus.STALE
        halt = row["halt"] if pending_halt is None else _pending_doc(pending_halt)
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
            "halt": halt,
        }

    # ------------------------------------------------------------------ ingest
    async def ingest(self, state: RunState, message: Any) -> dict[str, Any]:
        """Decode a step batch for the run of ``state`` (from :meth:`visible_state`; ProtocolError when the
        batch is bad), decide it, commit it; return the reply."""
        if state.forgotten:  # re-registered or deleted since it was looked up: decide against what replaced it
            state = await self.state(state.run_id)
        run_id = state.run_id
        batch = protocol.decode_steps(message, n_layers=state.n_layers, limits=self.settings.limits)
        async with state.lock:
            await self._learn_acked_commands(state, batch.acks)
            write, deliver = self._decide(state, batch)
        try:
            await self.committer.write(write)
        except StoreError:
            self.forget(run_id)  # the detectors saw records the store did not keep
            raise
        if write.new_commands:
            state.wake()  # committed: the channels may hand it out
        self.on_records(batch.columns.n)
        return {"accepted": batch.columns.n, "commands": [wire_command(c) for c in deliver]}

    async def _learn_acked_commands(self, state: RunState, acks: list[dict[str, Any]]) -> None:
        """Fetch the commands acknowledged here that another replica issued (rare: once per halt)."""
        unknown = [ack["id"] for ack in acks if ack["id"] not in state.commands]
        for command_id in unknown:
            command = await run_in_threadpool(self.store.get_command, state.run_id, command_id)
            if command is not None:
                state.add_command(command)

    def _decide(self, state: RunState, batch: protocol.StepBatch) -> tuple[IngestWrite, list[CommandRow]]:
        now = self.clock()
        fresh = batch.columns.take(state.recent.fresh(batch.attempt, batch.columns))
        findings = state.pipeline.process(fresh)
        changes = state.tracker.update(fresh.steps.tolist(), findings)
        write = IngestWrite(state.run_id, batch.attempt, now, fresh)
        status, halt = self._acknowledge(state, write, batch.acks, now)
        self._record_episodes(state, write, changes, findings)
        recovered, resumed = self._record_client_events(state, write, batch.events)
        if resumed:
            status, halt = RunStatus.RUNNING, None
        self._apply_policy(state, write, [f for f in findings if f.step > recovered], fresh, now)
        state.remember(fresh)
        state.last_seen = now
        if batch.final and state.status == RunStatus.RUNNING:
            state.status = status = RunStatus.FINISHED
        write.progress = RunProgress(
            last_seen=now,
            last_step=state.last_step,
            health=state.health,
            steps_to_nonfinite=state.steps_to_nonfinite,
            stored=fresh.n,
            dropped=batch.dropped,
            attempt=batch.attempt,
            status=status,
            halt=halt,
            clear_halt=resumed,
        )
        return write, self._deliverable(state, write, now)

    @staticmethod
    def _record_client_events(state: RunState, write: IngestWrite, events: list[dict[str, Any]]) -> tuple[int, bool]:
        """Keep the events the job reported itself (a recovery) as closed ``info`` events of detector
        ``kind``, counted; return the last step at which a recovery answered a halt (-1: none), and
        whether that halt was the run's, acknowledged: then the run is running again.

        A recovery that answered a halt (``details.command_id``) means the job carried on: the halt is no
        longer in force, so the next critical finding can halt the run again. Findings at or before that
        step are on records the recovery undid: they halt nothing.
        """
        recovered, resumed = -1, False
        for event in events:
            step = event["step"]
            doc: EventRow = {
                "detector": event["kind"], "severity": Severity.INFO, "layer": None, "state": EventState.CLOSED,
                "step": step, "first_step": step, "last_step": step, "end_step": step, "message": event["message"],
                "remedy": "", "details": event["details"],
            }  # fmt: skip
            write.new_events.append((doc, snapshot(doc)))
            state.events_total[(event["kind"], Severity.INFO)] += 1
            answered = event["details"].get("command_id")
            if answered:
                recovered = max(recovered, step)
                halt = state.latest_halt
                if halt is not None and halt["id"] == answered and state.status == RunStatus.HALTED:
                    state.status, resumed = RunStatus.RUNNING, True
        return recovered, resumed

    def _acknowledge(
        self, state: RunState, write: IngestWrite, acks: list[dict[str, Any]], now: float
    ) -> tuple[RunStatus | None, RunHalt | None]:
        """Apply the job's acknowledgements; the run's new status and halt when one was a halt."""
        status = halt = None
        for ack in acks:
            write.acks.append((ack["id"], ack["step"]))
            command = state.commands.get(ack["id"])
            if command is None or command["acked_at"] is not None:
                continue  # unknown, or acknowledged before: the first acknowledgement wins
            command["acked_at"], command["acked_step"] = now, ack["step"]
            if command["action"] == "halt":
                state.status = status = RunStatus.HALTED
                halt = _halt_doc(command)
        return status, halt

    def _record_episodes(
        self, state: RunState, write: IngestWrite, changes: list[EpisodeChange], findings: list[Finding]
    ) -> None:
        """Open, worsen and close events as the episodes did, in step order: an episode that starts and
        ends within one batch keeps the findings it had before it ended, and one that starts again after
        it gets only its own."""
        by_key: dict[EventKey, list[Finding]] = {}
        for finding in findings:
            by_key.setdefault(finding.key, []).append(finding)
        touched: dict[int, EventRow] = {}
        started: set[int] = set()  # events of episodes that started in this batch: their findings start there
        for change in changes:
            if change.kind == "started" and change.key not in state.open_events and change.finding is not None:
                event = event_from(change.finding)
                state.open_events[change.key] = event
                state.events_total[(change.finding.detector, change.finding.severity)] += 1
                write.new_events.append((event, snapshot(event)))
                started.add(id(event))
            elif change.kind == "ended" and change.key in state.open_events:
                event = state.open_events.pop(change.key)
                since = event["first_step"] if id(event) in started else None
                self._fold(state, event, by_key.get(change.key, []), since, before=change.step)
                event["state"], event["end_step"] = EventState.CLOSED, change.step
                touched[id(event)] = event
        for key, event in state.open_events.items():
            since = event["first_step"] if id(event) in started else None
            if self._fold(state, event, by_key.get(key, []), since, before=None):
                touched[id(event)] = event
        write.changed_events += [(event, snapshot(event)) for event in touched.values()]

    @staticmethod
    def _fold(state: RunState, event: EventRow, findings: list[Finding], since: int | None, before: int | None) -> bool:
        """Fold the findings of the event's episode (from ``since``, before ``before``) into it; True when
        there were any."""
        mine = [f for f in findings if (since is None or f.step >= since) and (before is None or f.step < before)]
        for finding in mine:
            if worsen(event, finding):
                state.events_total[(finding.detector, finding.severity)] += 1
        return bool(mine)

    def _apply_policy(
        self, state: RunState, write: IngestWrite, findings: list[Finding], fresh: StepColumns, now: float
    ) -> None:
        culprit = finding_to_halt(state.spec.get("halt_on", HaltPolicy.CRITICAL), findings)
        if culprit is None or is_in_force(state.latest_halt, state.status):
            return
        command = new_command(
            reason=halt_reason(culprit), source="detector", step=culprit.step, at_step=int(fresh.steps.max()), now=now
        )
        state.commands[command["id"]] = command
        write.new_commands.append(command)
        self.on_halt("detector")

    def _deliverable(self, state: RunState, write: IngestWrite, now: float) -> list[CommandRow]:
        """Unacknowledged commands never delivered, or delivered over ``redelivery_s`` ago; marks them."""
        due = [
            command
            for command in state.commands.values()
            if command["acked_at"] is None
            and (command["delivered_at"] is None or command["delivered_at"] < now - self.settings.redelivery_s)
        ]
        for command in sorted(due, key=lambda c: c["created_at"]):
            command["delivered_at"] = now
            write.delivered.append(command["id"])
        return due

    # ------------------------------------------------------------------ command channel
    async def wait_for_commands(self, run_id: str, *, known: frozenset[str], wait: float) -> list[dict[str, Any]]:
        """The run's pending commands not in ``known``: at once when there are some, else as soon as one
        exists, else none after ``wait`` seconds."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            state = await self.state(run_id)
            pending = state.pending_commands(known)
            remaining = deadline - asyncio.get_running_loop().time()
            if pending or remaining <= 0 or self._releasing:
                return [wire_command(c) for c in pending]
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiters.add(woken)
            try:
                await asyncio.wait_for(woken, remaining)
            except asyncio.TimeoutError:
                return []
            finally:
                state.waiters.discard(woken)

    def release_waiters(self) -> None:
        """Answer every waiting command channel now and the next ones at once (the server is stopping:
        the jobs poll again, elsewhere or later)."""
        self._releasing = True
        for state in self.states():
            state.wake()

    # ------------------------------------------------------------------ operator halts
    async def halt(
        self, run_id: str, *, reason: str, source: str, sent_by: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Queue a halt for the run's next ingest reply; idempotent while one is in force. ``sent_by`` is
        the name of the token that asked (the audit trail), None for a detector."""
        state = self._states.get(run_id)
        if state is not None:
            async with state.lock:  # decided against what this replica holds, not behind its back
                return await self._halt(run_id, state, reason, source, sent_by)
        return await self._halt(run_id, None, reason, source, sent_by)

    async def _halt(
        self, run_id: str, state: RunState | None, reason: str, source: str, sent_by: str | None
    ) -> tuple[dict[str, Any], bool]:
        in_force = state.latest_halt if state is not None else None
        if state is not None and in_force is not None and is_in_force(in_force, state.status):
            return _public_command(in_force), False
        command, created = await run_in_threadpool(self._halt_in_store, run_id, reason, source, sent_by)
        if created:
            if state is not None:
                state.add_command(command)
            self.on_halt(source)
        return _public_command(command), created

    def _halt_in_store(self, run_id: str, reason: str, source: str, sent_by: str | None) -> tuple[CommandRow, bool]:
        now = self.clock()
        with self.store.transaction():
            row = self.store.get_run(run_id)
            if row is None:
                raise UnknownRun(run_id)
            current = self.store.active_halt(run_id)
            if current is not None and is_in_force(current, row["status"]):
                return current, False
            at_step = row["last_step"] or 0
            command = new_command(
                reason=reason, source=source, step=row["last_step"], at_step=at_step, now=now, sent_by=sent_by
            )
            self.store.insert_command(run_id, command)
        return command, True

    # ------------------------------------------------------------------ other replicas
    async def watch_commands(self) -> None:
        """On a shared store, hear at once of the commands another replica issues (the store's
        notifications, PostgreSQL ``LISTEN``), and look every ``command_poll_s`` for them as well, so that
        a missed notification (a dropped connection) delays a halt by a second at most."""
        if not self.store.shared:
            return
        loop = asyncio.get_running_loop()

        def heard(run_id: str, command_id: str) -> None:  # on the store's listening thread
            loop.call_soon_threadsafe(self._fetch_command, run_id, command_id)

        stop_listening = self.store.listen_commands(heard)
        try:
            while True:
                await asyncio.sleep(self.settings.command_poll_s)
                try:
                    commands = await run_in_threadpool(self.store.unacked_commands)
                except StoreError:
                    continue  # the next look retries; ingest reports the outage itself
                self.learn_commands(commands)
        finally:
            stop_listening()

    def _fetch_command(self, run_id: str, command_id: str) -> None:
        state = self._states.get(run_id)
        if state is None or command_id in state.commands:
            return  # no job of this run talks to this replica, or it is known already

        async def fetch() -> None:
            with contextlib.suppress(StoreError):  # the poll finds it later
                command = await run_in_threadpool(self.store.get_command, run_id, command_id)
                if command is not None and command_id not in state.commands:
                    state.add_command(command)

        task = asyncio.ensure_future(fetch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def learn_commands(self, commands: list[RunCommandRow]) -> None:
        """Add commands issued elsewhere to the runs held here (those already known stay as they are)."""
        for command in commands:
            state = self._states.get(command["run_id"])
            if state is not None and command["id"] not in state.commands:
                state.add_command(cast(CommandRow, {k: v for k, v in command.items() if k != "run_id"}))

    # ------------------------------------------------------------------ cache
    async def state(self, run_id: str) -> RunState:
        """The run's in-memory state, loaded from the store on first use (once, however many ask)."""
        with self._states_lock:
            state = self._states.get(run_id)
        return state if state is not None else await self._load_once(run_id, None)

    async def visible_state(self, run_id: str, caller: Caller) -> RunState:
        """The run's in-memory state as :meth:`state`, once ``caller`` may see the run: a run of another team
        raises the same :class:`UnknownRun` as a missing one, and is not loaded."""
        with self._states_lock:
            state = self._states.get(run_id)
        if state is None:
            row = await run_in_threadpool(self.store.get_run, run_id)
            if row is None or not caller.can_see(row["team"]):
                raise UnknownRun(run_id)
            return await self._load_once(run_id, row)
        if not caller.can_see(state.team or None):
            raise UnknownRun(run_id)
        return state

    async def _load_once(self, run_id: str, row: RunRow | None) -> RunState:
        loading = self._loading.get(run_id)
        if loading is None:
            loading = asyncio.ensure_future(run_in_threadpool(self._load, run_id, row))
            self._loading[run_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(run_id, None))
        return await asyncio.shield(loading)

    def _load(self, run_id: str, row: RunRow | None) -> RunState:
        """Build the run's state from ``row`` (read here when None) and keep it, unless another request's
        load won meanwhile."""
        row = self.store.get_run(run_id) if row is None else row
        if row is None:
            raise UnknownRun(run_id)
        loaded = RunState.load(self.store, row, horizon=self.settings.horizon, window=self.settings.window)
        with self._states_lock:
            return self._states.setdefault(run_id, loaded)

    def states(self) -> list[RunState]:
        """The runs this replica holds in memory (what its /metrics exports)."""
        with self._states_lock:
            return list(self._states.values())

    def forget(self, run_id: str) -> None:
        """Drop the run's in-memory state (the next request reloads it from the store)."""
        with self._states_lock:
            state = self._states.pop(run_id, None)
        if state is not None:
            state.forgotten = True
        if state is not None and self._loop is not None:  # its channels look again, at what replaces it
            self._loop.call_soon_threadsafe(state.wake)


def _halt_doc(command: CommandRow) -> RunHalt:
    """A run's halt once the job acknowledged it: where it really stopped."""
    return {**_pending_doc(command), "state": HaltState.ACKNOWLEDGED}


def _pending_doc(command: CommandRow) -> RunHalt:
    """A run's halt from the moment it exists: who sent it, why, when, and where the job must stop."""
    return {
        "command_id": command["id"],
        "state": HaltState.PENDING,
        "reason": command["reason"],
        "source": command["source"],
        "step": command["step"],
        "at_step": command["at_step"],
        "created_at": command["created_at"],
        "delivered_at": command.get("delivered_at"),
        "acked_step": command["acked_step"],
        "acked_at": command["acked_at"],
        "sent_by": command.get("sent_by"),
    }


def _public_command(command: CommandRow) -> dict[str, Any]:
    public = {**wire_command(command), "created_at": command["created_at"], "acked_step": command["acked_step"]}
    return public | {"sent_by": command.get("sent_by")}
