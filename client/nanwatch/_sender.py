"""The Monitor's sender thread: the run registration, then batches of records, with retries and backoff.

Every ``flush_interval`` seconds, or as soon as ``max_batch`` records wait, it posts them
(``POST /v1/runs/{run_id}/steps``, built by ``protocol.encode_batch``) and hands the commands in the reply
to :class:`~nanwatch._commands.Commands`. Delivery is at least once, in order, within the outbox's bound:
a batch that fails (no answer, timeout, 5xx, 408, 429) goes back to the front and is retried with
exponential backoff; a 404 means the service lost the run, so the registration is re-sent and the batch
retried at once; any other 4xx is a client bug: that batch is dropped (and counted) after one ERROR line,
so it cannot loop. On close it drains within the deadline and sends ``final``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from nanwatch import protocol
from nanwatch._backoff import Backoff
from nanwatch._commands import Commands
from nanwatch._outbox import Batch, Entry, Later, Outbox
from nanwatch._records import make_record
from nanwatch.transport import Reply, Request, Transport


class Outcome(enum.Enum):
    """How one attempt to send ended."""

    OK = "ok"  # sent, or nothing to send, or given up on for good
    RETRY = "retry"  # back off and try again
    LOST = "lost"  # the service forgot the run: re-register and retry now


class Sender:
    """The one thread that sends a Monitor's registration and records."""

    def __init__(
        self,
        *,
        run_id: str,
        attempt: str,
        transport: Transport,
        outbox: Outbox,
        commands: Commands,
        registration: dict[str, Any],
        register: bool,
        content_type: str,
        flush_interval: float,
        timeout: float,
        log: logging.Logger,
        url: str,
    ) -> None:
        self.run_id, self.attempt, self.url = run_id, attempt, url
        self.transport, self.outbox, self.commands = transport, outbox, commands
        self.content_type, self.flush_interval, self.timeout = content_type, flush_interval, timeout
        self.log = log
        self.registration = registration
        self.registered = threading.Event()  # the service has the run: the command channel may open
        self._reg_version = 1 if register else 0
        self._reg_sent = 0
        self._lost_streak = 0
        self._outage_dropped: int | None = None  # `dropped` when the current outage began
        self._last_error = ""
        self._errors_logged: set[int] = set()
        self._build_failed = False  # a log_step_later record could not be made (logged once)
        self._backoff = Backoff()
        self.thread = threading.Thread(target=self._run, name="nanwatch-sender", daemon=True)

    def register(self, registration: dict[str, Any]) -> None:
        """Send ``registration`` now (the command channel opens once the service has the run)."""
        with self.outbox.cond:
            self.registration = registration
            self._reg_version += 1
            self.outbox.urgent = True
            self.outbox.cond.notify_all()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            delay = 0.0 if self._reg_version else self.flush_interval  # register at once
            while self.outbox.wait(delay):
                delay = self._after(self._send_once(self.timeout, closing=False))
            self._drain()
        except Exception:  # never let a bug here end the thread silently or reach the training loop
            self.log.exception("nanwatch: sender for run %s failed; no more records are sent", self.run_id)

    def _drain(self) -> None:
        while (remaining := self.outbox.deadline - time.monotonic()) > 0:
            outcome = self._send_once(min(self.timeout, remaining), closing=True)
            if outcome is Outcome.OK and self.outbox.final_sent:
                return
            delay = self._after(outcome)
            if outcome is not Outcome.OK:  # after a success, send the next batch at once
                time.sleep(max(0.0, min(delay, self.outbox.deadline - time.monotonic())))

    def _after(self, outcome: Outcome) -> float:
        """Seconds until the next send, after an attempt that ended with ``outcome``."""
        if outcome is Outcome.OK:
            self._lost_streak = 0
            self._backoff.reset()
            self.outbox.retrying = False
            self._leave_outage()
            return self.flush_interval
        if outcome is Outcome.LOST and self._lost_streak == 0:
            self._lost_streak = 1
            return 0.0
        self._enter_outage()
        self.outbox.retrying = True
        return self._backoff.next_delay()

    def _send_once(self, timeout: float, closing: bool) -> Outcome:
        if self._reg_sent != self._reg_version:
            outcome = self._send_registration(timeout)
            if outcome is not Outcome.OK:
                return outcome
        batch = self._take_batch(closing)
        return Outcome.OK if batch is None else self._send_batch(batch, timeout)

    # ------------------------------------------------------------------ registration
    def _send_registration(self, timeout: float) -> Outcome:
        with self.outbox.cond:
            version, payload = self._reg_version, self.registration
        reply = self._request("PUT", f"/v1/runs/{self.run_id}", protocol.dumps(payload, self.content_type), timeout)
        if reply.ok or not (reply.retryable or reply.status == 404):
            if not reply.ok:
                self._error_once(reply, "the run registration was refused")
            with self.outbox.cond:
                self._reg_sent = max(self._reg_sent, version)
            if reply.ok:
                self.registered.set()
            return Outcome.OK
        self._last_error = describe(reply)
        return Outcome.RETRY

    # ------------------------------------------------------------------ batches
    def _take_batch(self, closing: bool) -> Batch | None:
        taken = self.outbox.take(closing)
        if taken is None:
            return None
        entries, acks, final, events = taken
        records = [self._made(entry) for entry in entries]
        return Batch([r for r in records if r is not None], acks, final, events)

    def _made(self, entry: Entry) -> dict[str, Any] | None:
        """The record of an entry; None (dropped, counted, logged once) if a ``log_step_later`` one cannot
        be made."""
        if not isinstance(entry, Later):
            return entry
        try:
            return make_record(entry.step, entry.wall_time, **entry.build())
        except Exception as exc:  # a caller's build() failing must not stop the sender
            self.outbox.drop(1)
            log = self.log.debug if self._build_failed else self.log.error
            self._build_failed = True
            log("nanwatch: the record of step %d of run %s could not be made and was dropped: %s: %s",
                entry.step, self.run_id, type(exc).__name__, exc)  # fmt: skip
            return None

    def _send_batch(self, batch: Batch, timeout: float) -> Outcome:
        try:
            data, _ = protocol.encode_batch(
                batch.records,
                attempt=self.attempt,
                acks=batch.acks,
                dropped=self.outbox.dropped,
                final=batch.final,
                content_type=self.content_type,
                events=batch.events,
            )
        except (ValueError, TypeError, OverflowError) as exc:
            return self._reject(batch, Reply(0, error=f"could not encode the batch: {exc}"))
        return self._on_reply(batch, self._request("POST", f"/v1/runs/{self.run_id}/steps", data, timeout))

    def _on_reply(self, batch: Batch, reply: Reply) -> Outcome:
        if reply.ok:
            self._read_commands(reply)  # before delivered(): sync() must find the commands once it wakes
            self.outbox.delivered(batch)
            return Outcome.OK
        if reply.retryable or reply.status == 404:
            self.outbox.requeue(batch)
            self._last_error = describe(reply)
            if reply.status == 404:
                with self.outbox.cond:
                    self._reg_sent = -1
                return Outcome.LOST
            return Outcome.RETRY
        return self._reject(batch, reply)

    def _reject(self, batch: Batch, reply: Reply) -> Outcome:
        self.outbox.reject(batch)
        self._error_once(reply, f"a batch of {len(batch.records)} records was refused and dropped")
        return Outcome.OK

    def _read_commands(self, reply: Reply) -> None:
        if not reply.body:
            return
        try:
            loaded = protocol.loads(reply.body, protocol.content_type_of(reply.content_type))
            self.commands.offer(protocol.decode_reply(loaded)["commands"])
        except protocol.ProtocolError as exc:
            self._error_once(Reply(-1, error=str(exc)), "the service's reply could not be read")

    def _request(self, method: str, path: str, body: bytes, timeout: float) -> Reply:
        headers = {"Content-Type": self.content_type, "Accept": self.content_type}
        return self.transport.request(Request(method, path, body, headers, timeout))

    # ------------------------------------------------------------------ what the sender logs
    def _enter_outage(self) -> None:
        if self._outage_dropped is not None:
            return
        self._outage_dropped = self.outbox.dropped
        self.outbox.set_away(True)  # a sync() in progress stops waiting
        self.log.warning(
            "nanwatch: service at %s unreachable (%s); buffering up to %d records, training continues",
            self.url,
            self._last_error,
            self.outbox.buffer_size,
        )

    def _leave_outage(self) -> None:
        if self._outage_dropped is None:
            return
        lost, self._outage_dropped = self.outbox.dropped - self._outage_dropped, None
        self.outbox.set_away(False)
        self.log.info(
            "nanwatch: service at %s reachable again; resumed run %s (%d records dropped meanwhile)",
            self.url,
            self.run_id,
            lost,
        )

    def _error_once(self, reply: Reply, what: str) -> None:
        """Log a refusal at ERROR once per HTTP status, with the service's own message."""
        if reply.status in self._errors_logged:
            self.log.debug("nanwatch: %s: %s", what, describe(reply))
            return
        self._errors_logged.add(reply.status)
        self.log.error(
            "nanwatch: %s by %s for run %s: %s (a client bug; please report it)",
            what,
            self.url,
            self.run_id,
            describe(reply),
        )


def describe(reply: Reply) -> str:
    """What went wrong with an exchange, for a log line."""
    if reply.status <= 0:
        return reply.error
    return f"HTTP {reply.status}: {_service_message(reply)}"


def _service_message(reply: Reply) -> str:
    """The service's error message (``detail`` of a FastAPI error) or the start of the raw body."""
    try:
        loaded = protocol.loads(reply.body, protocol.content_type_of(reply.content_type))
    except protocol.ProtocolError:
        return reply.body[:200].decode("utf-8", "replace")
    detail = loaded.get("detail", loaded) if isinstance(loaded, Mapping) else loaded
    return str(detail)[:500]
