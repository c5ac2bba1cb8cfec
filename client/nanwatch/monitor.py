"""The framework-free ``Monitor``: record a training job's per-step numerics and obey the service's halts.

Threading. ``Monitor.log_step`` runs on the training thread and never touches the network: it turns the
values into Python floats, appends one record to a bounded in-memory buffer under a lock, and checks for
a halt. ``log_step_later`` appends a record whose values the sender thread converts when it takes the
record (the Keras callback's way: the training thread then only copies one vector per step). One daemon
thread per Monitor (``nanwatch-sender``) does all the I/O: it sends the run registration (``PUT
/v1/runs/{run_id}``) before the first batch, then every ``flush_interval`` seconds, or as soon as
``max_batch`` records are waiting, posts them (``POST /v1/runs/{run_id}/steps``) and reads the commands
in the reply. Monitors share no state, so several can live in one process.

Delivery. Records are delivered at least once, in order, within the buffer's bound: a batch that fails
(network error, timeout, 5xx, 408, 429) goes back to the front of the buffer and is retried with
exponential backoff; a full buffer drops its oldest records and counts them in ``dropped``, which every
batch reports to the service (a batch whose reply was lost may have been stored before the requeue
dropped it, so ``dropped`` bounds what is missing from above). A 404 means the service lost the run, so
the registration is re-sent and the batch retried. Any other 4xx is a client bug: that batch is dropped
(and counted) after one ERROR line, so it cannot loop. ``close()`` flushes what is buffered within its
timeout and sends ``final``.

Commands. A halt arrives in the reply to an ingest request; it stays pending until a ``log_step`` reaches
its ``at_step`` (at once when it has none), yields one ``Halt`` there and is acknowledged in the next
batch. Commands are deduplicated by id, so a command the service repeats until acknowledged is applied
once. Independently of the service, a non-finite loss or gradient norm halts the job at once unless
``halt_on="never"``.
"""

from __future__ import annotations

import enum
import http.client
import logging
import math
import os
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import numpy as np

from nanwatch import protocol

__all__ = ["Halt", "Monitor"]

_BACKOFF_START: Final = 0.5
_BACKOFF_CAP: Final = 10.0
_MAX_ACKS: Final = 1000
_RETRY_STATUSES: Final = frozenset({0, 408, 429})  # 0: no HTTP answer at all (refused, timeout, reset)


@dataclass(frozen=True)
class Halt:
    """Why and where a job must stop.

    ``source`` is ``"detector"``, ``"operator"`` or ``"alertmanager"`` for a command from the service
    (then ``command_id`` and ``at_step`` are the command's) and ``"client"`` for the local non-finite check.
    """

    reason: str
    step: int
    source: str
    command_id: str | None = None
    at_step: int | None = None


class _Later:
    """A record whose ``log_step`` keyword arguments ``build()`` makes on the sender thread."""

    __slots__ = ("build", "step", "wall_time")  # made on the training thread, every step: kept cheap

    def __init__(self, step: int, wall_time: float, build: Callable[[], Mapping[str, Any]]) -> None:
        self.step, self.wall_time, self.build = step, wall_time, build

    def record(self) -> dict[str, Any]:
        return _make_record(self.step, self.wall_time, **self.build())


@dataclass
class _Batch:
    records: list[dict[str, Any]]  # made from _Later entries by _send_batch
    acks: list[dict[str, Any]]
    final: bool
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Reply:
    status: int  # 0 when no HTTP answer came back
    body: bytes = b""
    content_type: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status in _RETRY_STATUSES or self.status >= 500


class _Outcome(enum.Enum):
    OK = "ok"  # sent, or nothing to send, or given up on for good
    RETRY = "retry"  # back off and try again
    LOST = "lost"  # the service forgot the run: re-register and retry now


@dataclass
class _Backoff:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... capped, each scaled by a random 0.5-1."""

    start: float = _BACKOFF_START
    cap: float = _BACKOFF_CAP
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = min(self.cap, self.start * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class Monitor:
    """Stream per-step numerics of any training loop to the nanwatch service and report its halts.

    ``url`` defaults to ``$NANWATCH_URL`` and ``token`` to ``$NANWATCH_TOKEN`` (sent as a bearer token).
    ``run_id`` defaults to a generated id, logged once. ``layers`` is the layer table in forward order
    (dicts with ``name``, ``kind``, ``activation``, ``params``); per-layer arrays given to ``log_step``
    follow it. Use as a context manager, or call ``close()`` when training ends.
    """

    _closing: bool  # close() was called: log_step buffers nothing more, the sender drains and stops
    _deadline: float  # time.monotonic() by which close() gives up on the service

    def __init__(
        self,
        url: str | None = None,
        run_id: str | None = None,
        *,
        token: str | None = None,
        halt_on: str = "critical",
        name: str | None = None,
        team: str | None = None,
        framework: str = "custom",
        dtype_policy: str = "float32",
        layers: Sequence[Mapping[str, Any]] | None = None,
        buffer_size: int = 10_000,
        flush_interval: float = 0.5,
        max_batch: int = 512,
        timeout: float = 5.0,
        content_type: str = protocol.MSGPACK,
        logger: logging.Logger | None = None,
        meta: Mapping[str, str] | None = None,
        register: bool = True,
    ) -> None:
        self._log = logger or logging.getLogger("nanwatch")
        self.url = _service_url(url)
        self._check_limits(buffer_size, flush_interval, max_batch, timeout)
        self.buffer_size, self.flush_interval, self.max_batch = buffer_size, flush_interval, max_batch
        self.timeout, self.content_type = timeout, _check_content_type(content_type)
        fields = {"name": name, "team": team, "framework": framework, "meta": dict(meta or {})}
        self._registration = _registration({}, layers or [], dtype_policy, halt_on=halt_on, **fields)
        self.run_id = self._choose_run_id(run_id)
        self.attempt = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.halted: Halt | None = None
        self._headers = _headers(content_type, os.environ.get("NANWATCH_TOKEN") if token is None else token)
        self._opener = urllib.request.build_opener()
        self._init_state()
        self._reg_version = 1 if register else 0
        self._thread = threading.Thread(target=self._run, name="nanwatch-sender", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def dropped(self) -> int:
        """Records dropped so far: the oldest of a full buffer, and batches the service refused."""
        return self._dropped

    @property
    def halt_on(self) -> str:
        """The run's halt policy: ``"critical"``, ``"warning"`` or ``"never"`` (no local halts either)."""
        return str(self._registration["halt_on"])

    def register(
        self,
        layers: Sequence[Mapping[str, Any]] | None = None,
        dtype_policy: str | None = None,
        **fields: Any,
    ) -> None:
        """Update the run registration and have the sender (re)send it before the next batch.

        ``fields`` are other registration fields: ``name``, ``team``, ``framework``, ``halt_on``, ``stable_loss``,
        ``meta``.
        Raises :class:`~nanwatch.ProtocolError` at once if a value does not follow the protocol.
        """
        with self._cond:
            self._registration = _registration(self._registration, layers, dtype_policy, **fields)
            self._reg_version += 1

    def log_step(
        self,
        step: int,
        *,
        loss: float | None = None,
        lr: float | None = None,
        grad_norm: float | None = None,
        loss_scale: float | None = None,
        skipped: bool | None = None,
        layers: Mapping[str, Sequence[float] | np.ndarray] | None = None,
        wall_time: float | None = None,
    ) -> Halt | None:
        """Record one step without blocking; return a ``Halt`` if the job must stop at this step, else None.

        ``layers`` maps per-layer statistics (``protocol.LAYER_FIELDS``, e.g. ``grad_norm``) to one value
        per layer of the layer table. Values may be Python or numpy numbers, arrays or eager tensors.

        A Halt is returned once, at the step it takes effect; ``halted`` keeps the first one. Each service
        command yields its own Halt; the local non-finite check fires only while nothing has halted yet.
        """
        record = _make_record(
            step, wall_time, loss=loss, lr=lr, grad_norm=grad_norm, loss_scale=loss_scale, skipped=skipped,
            layers=layers,
        )  # fmt: skip
        halt = self._queue(record, record["step"])
        if halt is None and self.halted is None and self.halt_on != "never":
            halt = self._local_halt(record)
        if halt is not None:
            self._halt(halt)
        return halt

    def log_step_later(
        self, step: int, build: Callable[[], Mapping[str, Any]], *, wall_time: float | None = None
    ) -> Halt | None:
        """``log_step(step, **build())``, with ``build`` called on the sender thread when it takes the record.

        For values whose conversion would cost the training thread time: the Keras callback passes its
        step vector this way (unpacking it into Python floats costs ~0.1 ms per step). Halts from the
        service are returned as by ``log_step``, but **the local non-finite check does not see these
        values**: send a step whose loss or gradient norm may not be finite through ``log_step``. A
        ``build`` that raises costs its record (logged once, counted in ``dropped``).
        """
        later = _Later(*_step_and_time(step, wall_time), build)
        halt = self._queue(later, later.step)
        if halt is not None:
            self._halt(halt)
        return halt

    def report_event(self, step: int, kind: str, message: str, **details: float | int | str) -> None:
        """Queue an event the job itself reports (``kind="recovery"``: what it rolled back to) for the next
        batch. The service keeps it with the run's events (detector ``kind``, severity ``info``) and counts
        it in ``nanwatch_events_total``. Raises :class:`~nanwatch.ProtocolError` for a value the protocol
        does not take (``kind`` is lower-case ``[a-z0-9_]``, details are numbers or strings)."""
        event = {"step": int(step), "kind": kind, "message": message, "details": details}
        [decoded] = protocol.decode_batch({"events": [event]})["events"]
        with self._cond:
            if not self._closing:
                self._events.append(decoded)

    def sync(self, step: int, timeout: float = 1.0) -> Halt | None:
        """Wait until the service has answered for every record up to ``step``; return a halt due then.

        Opt-in lockstep, for jobs whose steps are so short that a halt riding on an asynchronous reply
        would land too many steps late: it sends at once and waits at most ``timeout`` seconds, and not at
        all while the service is unreachable, so an outage never slows training by more than one timeout.
        """
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._answered(step), timeout=timeout)
            halt = self._due_command(step)
        if halt is not None:
            self._halt(halt)
        return halt

    def _answered(self, step: int) -> bool:
        away = self._outage_dropped is not None or self._closing
        return away or (self._delivered_step >= step and not self._in_flight)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (for at most ``timeout`` seconds), send ``final``, stop the sender.

        Idempotent. If the service cannot be reached in time, logs how many records were not delivered.
        ``log_step`` still checks for halts after ``close()`` but buffers nothing more.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        self._report_undelivered()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor(url={self.url!r}, run_id={self.run_id!r}, halted={self.halted!r})"

    # ------------------------------------------------------------------ setup

    def _choose_run_id(self, run_id: str | None) -> str:
        if run_id is not None:
            return protocol.check_run_id(run_id)
        run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self._log.info("nanwatch: run id %s (pass run_id=... to choose one)", run_id)
        return run_id

    @staticmethod
    def _check_limits(buffer_size: int, flush_interval: float, max_batch: int, timeout: float) -> None:
        if buffer_size < 1 or not 1 <= max_batch <= protocol.MAX_RECORDS:
            raise ValueError(
                f"nanwatch: buffer_size must be >= 1 and max_batch in 1..{protocol.MAX_RECORDS}, "
                f"got buffer_size={buffer_size}, max_batch={max_batch}"
            )
        if not (flush_interval > 0 and timeout > 0):
            raise ValueError(
                f"nanwatch: flush_interval and timeout must be > 0 seconds, "
                f"got flush_interval={flush_interval}, timeout={timeout}"
            )

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._buffer: deque[dict[str, Any] | _Later] = deque()
        self._acks: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []  # report_event's, for the next batch
        self._dropped: int = 0
        self._in_flight: int = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._applied: set[str] = set()
        self._reg_sent: int = 0
        self._closing = False
        self._deadline = math.inf
        self._final_sent: bool = False
        self._lost_streak: int = 0
        self._outage_dropped: int | None = None  # `dropped` when the current outage began
        self._last_error: str = ""
        self._errors_logged: set[int] = set()
        self._build_failed = False  # a log_step_later record could not be made (logged once)
        self._backoff = _Backoff()
        self._urgent = False  # sync() asked for a send now
        self._delivered_step = -1  # the highest step the service has acknowledged

    # ------------------------------------------------------------------ training thread

    def _queue(self, record: dict[str, Any] | _Later, step: int) -> Halt | None:
        """Buffer ``record``; return the service's halt due at ``step``, if any."""
        with self._cond:
            self._append(record)
            return self._due_command(step)

    def _append(self, record: dict[str, Any] | _Later) -> None:
        if self._closing:
            return
        if len(self._buffer) >= self.buffer_size:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(record)
        if len(self._buffer) >= self.max_batch and self._flush_early():
            # only when the sender would act on it: during an outage the buffer stays full, and waking the
            # sender on every step (to find it must keep waiting) cost the training thread ~25 µs a step
            self._cond.notify_all()

    def _due_command(self, step: int) -> Halt | None:
        if not self._pending:
            return None
        due = [c for c in self._pending.values() if c["at_step"] is None or c["at_step"] <= step]
        for command in due:
            del self._pending[command["id"]]
            self._applied.add(command["id"])
            self._acks.append({"id": command["id"], "step": step})
        if not due:
            return None
        first = due[0]
        return Halt(first["reason"], step, first["source"], first["id"], first["at_step"])

    def _local_halt(self, record: Mapping[str, Any]) -> Halt | None:
        reason = _nonfinite_reason(record, self._layer_names())
        return None if reason is None else Halt(reason, record["step"], "client")

    def _layer_names(self) -> list[str]:
        return [layer["name"] for layer in self._registration["layers"]]

    def _halt(self, halt: Halt) -> None:
        if self.halted is None:
            self.halted = halt
        self._log.warning(
            "nanwatch: halting run %s at step %d: %s (%s)", self.run_id, halt.step, halt.reason, halt.source
        )

    def _report_undelivered(self) -> None:
        with self._cond:
            left = len(self._buffer) + self._in_flight
        if left:
            self._log.warning(
                "nanwatch: closed run %s with %d records not delivered to %s", self.run_id, left, self.url
            )

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        try:
            delay = self.flush_interval
            while self._wait(delay):
                delay = self._after(self._send_once(self.timeout, closing=False))
            self._drain()
        except Exception:  # never let a bug here end the thread silently or reach the training loop
            self._log.exception("nanwatch: sender for run %s failed; no more records are sent", self.run_id)

    def _wait(self, delay: float) -> bool:
        """Wait until the next flush is due; False once ``close()`` was called."""
        with self._cond:
            self._cond.wait_for(self._flush_early, timeout=delay)
            return not self._closing

    def _flush_early(self) -> bool:
        full = len(self._buffer) >= self.max_batch
        return self._closing or (self._backoff.failures == 0 and (full or self._urgent))

    def _drain(self) -> None:
        while (remaining := self._deadline - time.monotonic()) > 0:
            outcome = self._send_once(min(self.timeout, remaining), closing=True)
            if outcome is _Outcome.OK and self._final_sent:
                return
            delay = self._after(outcome)
            if outcome is not _Outcome.OK:  # after a success, send the next batch at once
                time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))

    def _after(self, outcome: _Outcome) -> float:
        """Seconds until the next send, after an attempt that ended with ``outcome``."""
        if outcome is _Outcome.OK:
            self._lost_streak = 0
            self._backoff.reset()
            self._leave_outage()
            return self.flush_interval
        if outcome is _Outcome.LOST and self._lost_streak == 0:
            self._lost_streak = 1
            return 0.0
        self._enter_outage()
        return self._backoff.next_delay()

    def _send_once(self, timeout: float, closing: bool) -> _Outcome:
        if self._reg_sent != self._reg_version:
            outcome = self._send_registration(timeout)
            if outcome is not _Outcome.OK:
                return outcome
        batch = self._take_batch(closing)
        return _Outcome.OK if batch is None else self._send_batch(batch, timeout)

    def _send_registration(self, timeout: float) -> _Outcome:
        with self._cond:
            version, payload = self._reg_version, self._registration
        reply = self._request("PUT", f"/v1/runs/{self.run_id}", protocol.dumps(payload, self.content_type), timeout)
        if reply.ok or not (reply.retryable or reply.status == 404):
            if not reply.ok:
                self._error_once(reply, "the run registration was refused")
            with self._cond:
                self._reg_sent = max(self._reg_sent, version)
            return _Outcome.OK
        self._last_error = _describe_reply(reply)
        return _Outcome.RETRY

    def _take_batch(self, closing: bool) -> _Batch | None:
        with self._cond:
            taken = [self._buffer.popleft() for _ in range(min(self.max_batch, len(self._buffer)))]
            acks, self._acks = self._acks[:_MAX_ACKS], self._acks[_MAX_ACKS:]
            events, self._events = self._events[:_MAX_ACKS], self._events[_MAX_ACKS:]
            final = closing and not self._buffer
            self._urgent = False
            if not (taken or acks or events or final):
                return None
            self._in_flight = len(taken)
        records = [self._made(r) if isinstance(r, _Later) else r for r in taken]
        return _Batch([r for r in records if r is not None], acks, final, events)

    def _made(self, later: _Later) -> dict[str, Any] | None:
        """The record of a ``log_step_later`` entry; None (dropped, counted, logged once) if it cannot be made."""
        try:
            return later.record()
        except Exception as exc:  # a caller's build() failing must not stop the sender
            with self._cond:
                self._dropped += 1
            log = self._log.debug if self._build_failed else self._log.error
            self._build_failed = True
            log("nanwatch: the record of step %d of run %s could not be made and was dropped: %s: %s",
                later.step, self.run_id, type(exc).__name__, exc)  # fmt: skip
            return None

    def _send_batch(self, batch: _Batch, timeout: float) -> _Outcome:
        body = {
            "protocol": protocol.PROTOCOL_VERSION,
            "attempt": self.attempt,
            "records": batch.records,
            "acks": batch.acks,
            "dropped": self._dropped,
            "final": batch.final,
        }
        if batch.events:  # only when there are some: a service older than events refuses the key
            body["events"] = batch.events
        try:
            data = protocol.dumps(body, self.content_type)
        except (ValueError, TypeError, OverflowError) as exc:
            return self._reject(batch, _Reply(0, error=f"could not encode the batch: {exc}"))
        return self._on_steps_reply(batch, self._request("POST", f"/v1/runs/{self.run_id}/steps", data, timeout))

    def _on_steps_reply(self, batch: _Batch, reply: _Reply) -> _Outcome:
        if reply.ok:
            self._read_commands(reply)  # before _delivered: sync() must find the commands once it wakes
            self._delivered(batch)
            return _Outcome.OK
        if reply.retryable or reply.status == 404:
            self._requeue(batch)
            self._last_error = _describe_reply(reply)
            if reply.status == 404:
                with self._cond:
                    self._reg_sent = -1
                return _Outcome.LOST
            return _Outcome.RETRY
        return self._reject(batch, reply)

    def _delivered(self, batch: _Batch) -> None:
        with self._cond:
            self._in_flight = 0
            self._final_sent = self._final_sent or batch.final
            self._delivered_step = max([self._delivered_step, *(r["step"] for r in batch.records)])
            self._cond.notify_all()

    def _requeue(self, batch: _Batch) -> None:
        """Put a failed batch back at the front, keeping the bound by dropping the oldest records."""
        with self._cond:
            self._in_flight = 0
            self._buffer.extendleft(reversed(batch.records))
            self._acks[:0] = batch.acks
            self._events[:0] = batch.events
            while len(self._buffer) > self.buffer_size:
                self._buffer.popleft()
                self._dropped += 1

    def _reject(self, batch: _Batch, reply: _Reply) -> _Outcome:
        """Drop a batch the service refused as malformed, so that it cannot be retried forever."""
        with self._cond:
            self._in_flight = 0
            self._dropped += len(batch.records)
        self._error_once(reply, f"a batch of {len(batch.records)} records was refused and dropped")
        return _Outcome.OK

    def _read_commands(self, reply: _Reply) -> None:
        if not reply.body:
            return
        try:
            loaded = protocol.loads(reply.body, protocol.content_type_of(reply.content_type))
            commands = protocol.decode_reply(loaded)["commands"]
        except protocol.ProtocolError as exc:
            self._error_once(_Reply(-1, error=str(exc)), "the service's reply could not be read")
            return
        with self._cond:
            for command in commands:
                if command["id"] not in self._applied:
                    self._pending.setdefault(command["id"], command)

    def _request(self, method: str, path: str, data: bytes, timeout: float) -> _Reply:
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return _Reply(response.status, response.read(), response.headers.get("Content-Type"))
        except urllib.error.HTTPError as exc:
            with exc:
                return _Reply(exc.code, _read_quietly(exc), exc.headers.get("Content-Type"))
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return _Reply(0, error=f"{type(reason).__name__}: {reason}".rstrip(": "))

    # ------------------------------------------------------------------ what the sender logs

    def _enter_outage(self) -> None:
        if self._outage_dropped is not None:
            return
        with self._cond:
            self._outage_dropped = self._dropped
            self._cond.notify_all()  # a sync() in progress stops waiting
        self._log.warning(
            "nanwatch: service at %s unreachable (%s); buffering up to %d records, training continues",
            self.url,
            self._last_error,
            self.buffer_size,
        )

    def _leave_outage(self) -> None:
        if self._outage_dropped is None:
            return
        lost, self._outage_dropped = self._dropped - self._outage_dropped, None
        self._log.info(
            "nanwatch: service at %s reachable again; resumed run %s (%d records dropped meanwhile)",
            self.url,
            self.run_id,
            lost,
        )

    def _error_once(self, reply: _Reply, what: str) -> None:
        """Log a refusal at ERROR once per HTTP status, with the service's own message."""
        if reply.status in self._errors_logged:
            self._log.debug("nanwatch: %s: %s", what, _describe_reply(reply))
            return
        self._errors_logged.add(reply.status)
        self._log.error(
            "nanwatch: %s by %s for run %s: %s (a client bug; please report it)",
            what,
            self.url,
            self.run_id,
            _describe_reply(reply),
        )


# ---------------------------------------------------------------------- helpers


def _service_url(url: str | None) -> str:
    url = url or os.environ.get("NANWATCH_URL")
    if not url:
        raise ValueError("nanwatch: no service URL; pass Monitor(url='http://host:8000') or set NANWATCH_URL")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"nanwatch: service URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _check_content_type(content_type: str) -> str:
    if content_type not in (protocol.MSGPACK, protocol.JSON):
        raise ValueError(
            f"nanwatch: content_type must be {protocol.MSGPACK!r} or {protocol.JSON!r}, got {content_type!r}"
        )
    return content_type


def _headers(content_type: str, token: str | None) -> dict[str, str]:
    headers = {"Content-Type": content_type, "Accept": content_type, "User-Agent": "nanwatch-client"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _registration(
    current: Mapping[str, Any],
    layers: Sequence[Mapping[str, Any]] | None,
    dtype_policy: str | None,
    **fields: Any,
) -> dict[str, Any]:
    """``current`` updated with the given values, validated by the protocol (raises ProtocolError)."""
    updated = {**current, **fields}
    if layers is not None:
        updated["layers"] = [{k: int(v) if k == "params" else v for k, v in layer.items()} for layer in layers]
    if dtype_policy is not None:
        updated["dtype_policy"] = dtype_policy
    return protocol.decode_run(updated)


def _make_record(
    step: int,
    wall_time: float | None,
    *,
    loss: float | None = None,
    lr: float | None = None,
    grad_norm: float | None = None,
    loss_scale: float | None = None,
    skipped: bool | None = None,
    layers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of ``log_step``'s arguments (ProtocolError for a bad value, TypeError for an unknown one)."""
    step, wall_time = _step_and_time(step, wall_time)
    record: dict[str, Any] = {"step": step, "wall_time": wall_time}
    scalars = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_scale": loss_scale}
    record.update({k: float(v) for k, v in scalars.items() if v is not None})
    if skipped is not None:
        record["skipped"] = bool(skipped)
    if layers:
        record["layers"] = {
            _layer_field(k): np.asarray(v, dtype=np.float64).ravel().tolist() for k, v in layers.items()
        }
    return record


def _step_and_time(step: int, wall_time: float | None) -> tuple[int, float]:
    """A record's step (ProtocolError when negative) and wall time (now, when not given)."""
    if int(step) < 0:
        raise protocol.ProtocolError("step", f"must be >= 0, got {step}")
    return int(step), time.time() if wall_time is None else float(wall_time)


def _layer_field(name: str) -> str:
    if name not in protocol.LAYER_FIELDS:
        raise protocol.ProtocolError(
            f"layers.{name}",
            f"unknown per-layer statistic; expected one of {', '.join(protocol.LAYER_FIELDS)}",
        )
    return name


def _nonfinite_reason(record: Mapping[str, Any], layer_names: Sequence[str]) -> str | None:
    """Name the first non-finite loss or gradient norm in ``record``, or None when all are finite."""
    for key, what in (("loss", "loss"), ("grad_norm", "global grad_norm")):
        if key in record and not math.isfinite(record[key]):
            return f"non-finite {what} ({record[key]})"
    norms = record.get("layers", {}).get("grad_norm", [])
    bad = next((i for i, value in enumerate(norms) if not math.isfinite(value)), None)
    if bad is None:
        return None
    layer = repr(layer_names[bad]) if bad < len(layer_names) else f"#{bad}"
    return f"non-finite grad_norm ({norms[bad]}) in layer {layer}"


def _describe_reply(reply: _Reply) -> str:
    if reply.status <= 0:
        return reply.error
    return f"HTTP {reply.status}: {_service_message(reply)}"


def _service_message(reply: _Reply) -> str:
    """The service's error message (``detail`` of a FastAPI error) or the start of the raw body."""
    try:
        loaded = protocol.loads(reply.body, protocol.content_type_of(reply.content_type))
    except protocol.ProtocolError:
        return reply.body[:200].decode("utf-8", "replace")
    detail = loaded.get("detail", loaded) if isinstance(loaded, Mapping) else loaded
    return str(detail)[:500]


def _read_quietly(response: urllib.error.HTTPError) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException):
        return b""
