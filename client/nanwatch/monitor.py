"""The framework-free ``Monitor``: record a training job's per-step numerics and obey the service's halts.

Threading. ``Monitor.log_step`` runs on the training thread and never touches the network: it turns the
values into a record, appends it to a bounded in-memory buffer (``_outbox``) and checks for a halt.
``log_step_later`` appends a record whose values the sender thread converts when it takes the record (the
Keras callback's way: the training thread then only copies one vector per step). Two daemon threads per
Monitor do all the I/O, through one transport (``nanwatch.transport``): the sender (``_sender``), which
registers the run and posts batches of records with retries and backoff, and the command channel
(``_channel``), one outbound long poll on which the service pushes commands the moment they exist.
Monitors share no state, so several can live in one process.

Commands. A halt arrives on the channel or in the reply to an ingest request, whichever comes first; it
stays pending until a ``log_step`` reaches its ``at_step`` (at once when it has none), yields one ``Halt``
there and is acknowledged in the next batch. Commands are deduplicated by id (``_commands``), so a command
that arrives both ways, or that the service repeats until acknowledged, is applied once. Independently of
the service, a non-finite loss or gradient norm halts the job at once unless ``halt_on="never"``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from nanwatch import protocol
from nanwatch._channel import CommandChannel
from nanwatch._commands import Commands, Halt
from nanwatch._outbox import Later, Outbox
from nanwatch._records import make_record, nonfinite_reason, registration, step_and_time
from nanwatch._sender import Sender
from nanwatch.transport import HttpTransport, Transport
from nanwatch.vocabulary import HaltPolicy

__all__ = ["Halt", "Monitor"]


class Monitor:
    """Stream per-step numerics of any training loop to the nanwatch service and report its halts.

    ``url`` defaults to ``$NANWATCH_URL`` and ``token`` to ``$NANWATCH_TOKEN`` (sent as a bearer token).
    ``run_id`` defaults to a generated id, logged once. ``layers`` is the layer table in forward order
    (dicts with ``name``, ``kind``, ``activation``, ``params``); per-layer arrays given to ``log_step``
    follow it. ``command_channel=False`` leaves halts to the replies to step batches (a few steps later).
    ``transport`` replaces the HTTP transport (tests pass a :class:`nanwatch.transport.MockTransport`).
    Use as a context manager, or call ``close()`` when training ends.
    """

    def __init__(
        self,
        url: str | None = None,
        run_id: str | None = None,
        *,
        token: str | None = None,
        halt_on: str = HaltPolicy.CRITICAL,
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
        command_channel: bool = True,
        transport: Transport | None = None,
    ) -> None:
        self._log = logger or logging.getLogger("nanwatch")
        self.url = _service_url(url)
        _check_limits(buffer_size, flush_interval, max_batch, timeout)
        self.buffer_size, self.flush_interval, self.max_batch = buffer_size, flush_interval, max_batch
        self.timeout, self.content_type = timeout, _check_content_type(content_type)
        fields = {"name": name, "team": team, "framework": framework, "meta": dict(meta or {})}
        self._registration = registration({}, layers or [], dtype_policy, halt_on=halt_on, **fields)
        self.run_id = self._choose_run_id(run_id)
        self.attempt = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.halted: Halt | None = None
        self.announce_halts = True  # log each halt as it falls due (a caller that may recover logs its own)
        token = os.environ.get("NANWATCH_TOKEN") if token is None else token
        self._transport = transport if transport is not None else HttpTransport(self.url, token=token)
        self._outbox = Outbox(buffer_size, max_batch)
        self._commands = Commands()
        self._sender = Sender(
            run_id=self.run_id, attempt=self.attempt, transport=self._transport, outbox=self._outbox,
            commands=self._commands, registration=self._registration, register=register,
            content_type=self.content_type, flush_interval=flush_interval, timeout=timeout, log=self._log, url=self.url,
        )  # fmt: skip
        self._channel = CommandChannel(
            run_id=self.run_id, transport=self._transport, commands=self._commands,
            registered=self._sender.registered, content_type=self.content_type, log=self._log,
        )  # fmt: skip
        self._sender.thread.start()
        if command_channel:
            self._channel.thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def dropped(self) -> int:
        """Records dropped so far: the oldest of a full buffer, and batches the service refused."""
        return self._outbox.dropped

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
        self._registration = registration(self._registration, layers, dtype_policy, **fields)
        self._sender.register(self._registration)

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
        record = make_record(
            step, wall_time, loss=loss, lr=lr, grad_norm=grad_norm, loss_scale=loss_scale, skipped=skipped,
            layers=layers,
        )  # fmt: skip
        self._outbox.append(record)
        halt = self._due(record["step"])
        if halt is None and self.halted is None and self.halt_on != HaltPolicy.NEVER:
            reason = nonfinite_reason(record, [layer["name"] for layer in self._registration["layers"]])
            halt = None if reason is None else Halt(reason, record["step"], "client")
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
        later = Later(*step_and_time(step, wall_time), build)
        self._outbox.append(later)
        halt = self._due(later.step)
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
        self._outbox.report(decoded)

    def sync(self, step: int, timeout: float = 1.0) -> Halt | None:
        """Wait until the service has answered for every record up to ``step``; return a halt due then.

        Opt-in lockstep, for jobs whose steps are so short that a halt riding on an asynchronous reply
        would land too many steps late: it sends at once and waits at most ``timeout`` seconds, and not at
        all while the service is unreachable, so an outage never slows training by more than one timeout.
        """
        outbox = self._outbox
        with outbox.cond:
            outbox.urgent = True
            outbox.cond.notify_all()
            outbox.cond.wait_for(
                lambda: outbox.away or outbox.closing or (outbox.delivered_step >= step and not outbox.in_flight),
                timeout=timeout,
            )
        halt = self._due(step)
        if halt is not None:
            self._halt(halt)
        return halt

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (for at most ``timeout`` seconds), send ``final``, stop both threads.

        Idempotent. If the service cannot be reached in time, logs how many records were not delivered.
        ``log_step`` still checks for halts after ``close()`` but buffers nothing more.
        """
        deadline = time.monotonic() + timeout
        if not self._outbox.close(deadline):
            return
        self._channel.stop()
        self._sender.thread.join(max(0.0, deadline - time.monotonic()))
        if not self._sender.thread.is_alive():
            self._transport.close()  # also ends the channel's poll in flight
        left = self._outbox.left()
        if left:
            self._log.warning(
                "nanwatch: closed run %s with %d records not delivered to %s", self.run_id, left, self.url
            )

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor(url={self.url!r}, run_id={self.run_id!r}, halted={self.halted!r})"

    # ------------------------------------------------------------------ helpers

    def _due(self, step: int) -> Halt | None:
        halt, applied = self._commands.due(step)
        for command_id in applied:
            self._outbox.acknowledge(command_id, step)
        return halt

    def _halt(self, halt: Halt) -> None:
        if self.halted is None:
            self.halted = halt
        if self.announce_halts:
            self.announce(halt)

    def announce(self, halt: Halt) -> None:
        """Log that the job halts at ``halt`` (one warning)."""
        self._log.warning(
            "nanwatch: halting run %s at step %d: %s (%s)", self.run_id, halt.step, halt.reason, halt.source
        )

    def _choose_run_id(self, run_id: str | None) -> str:
        if run_id is not None:
            return protocol.check_run_id(run_id)
        run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self._log.info("nanwatch: run id %s (pass run_id=... to choose one)", run_id)
        return run_id


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
