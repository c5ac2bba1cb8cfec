"""The Monitor's command channel: one outbound long poll, so that a halt reaches the job the moment it exists.

The thread opens ``GET /v1/runs/{run_id}/commands?wait=...&known=...`` once the run is registered; the
service answers at once with the commands the job does not know yet, or as soon as one exists, or with
none after ``wait`` seconds; the thread hands them to :class:`~nanwatch._commands.Commands` and asks again.
A failed poll is retried with jittered exponential backoff. No port is opened on the job. The replies to
step batches carry the same commands, so a job whose channel is down still gets them; each is applied once.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Final

from nanwatch import protocol
from nanwatch._backoff import Backoff
from nanwatch._commands import Commands
from nanwatch.transport import Request, Transport

KNOWN_IDS: Final = 50
"""Ids of received commands listed in each poll, the newest: the service holds few pending ones."""


class CommandChannel:
    """The thread that keeps a run's command channel open."""

    def __init__(
        self,
        *,
        run_id: str,
        transport: Transport,
        commands: Commands,
        registered: threading.Event,
        content_type: str,
        wait: float = 25.0,
        log: logging.Logger,
    ) -> None:
        self.run_id, self.transport, self.commands = run_id, transport, commands
        self.registered, self.content_type, self.wait = registered, content_type, wait
        self.log = log
        self._stop = threading.Event()
        self._backoff = Backoff()
        self.thread = threading.Thread(target=self._run, name="nanwatch-commands", daemon=True)

    def stop(self) -> None:
        """Stop asking; a poll in flight ends when the transport is closed or the service answers."""
        self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.registered.wait(timeout=0.5):
                    self._poll()
        except Exception:  # never let a bug here end the thread silently; the batch replies still carry halts
            self.log.exception(
                "nanwatch: command channel of run %s failed; halts arrive with batch replies", self.run_id
            )

    def _poll(self) -> None:
        known = ",".join(self.commands.known()[-KNOWN_IDS:])
        query = urllib.parse.urlencode({"wait": self.wait, **({"known": known} if known else {})})
        request = Request(
            "GET", f"/v1/runs/{self.run_id}/commands?{query}", b"", {"Accept": self.content_type}, self.wait + 10
        )
        reply = self.transport.request(request)
        if self._stop.is_set():
            return
        if reply.ok:
            try:
                loaded = protocol.loads(reply.body, protocol.content_type_of(reply.content_type))
                self.commands.offer(protocol.decode_reply(loaded)["commands"])
                self._backoff.reset()
                return
            except protocol.ProtocolError as exc:
                self.log.debug("nanwatch: the command channel's answer could not be read: %s", exc)
        else:
            self.log.debug("nanwatch: command channel of run %s: %s", self.run_id, reply.error or reply.status)
        self._stop.wait(self._backoff.next_delay())
