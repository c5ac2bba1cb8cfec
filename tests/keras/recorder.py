"""A real HTTP endpoint on 127.0.0.1 that stands in for the service: it decodes and keeps what it gets."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from nanwatch import protocol
from tests.loopback import LoopbackServer


class Recorder(LoopbackServer):
    """``PUT /v1/runs/{id}`` and ``POST /v1/runs/{id}/steps`` on a free port; replies with no commands.

    ``runs`` keeps the decoded registrations by run id, ``batches`` the decoded step batches as
    ``(run_id, batch)``, ``commands`` is what every ingest reply carries (a test may put a halt there).
    Use as a context manager.
    """

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.batches: list[tuple[str, dict[str, Any]]] = []
        self.commands: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(_handler(self), name="recorder")

    def records(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """The step records received (for ``run_id`` only, when given), in arrival order."""
        with self.lock:
            return [r for run, batch in self.batches if run_id in (None, run) for r in batch["records"]]


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            run = protocol.decode_run(self._body())
            with recorder.lock:
                recorder.runs[self.path.split("/")[3]] = run
            self._reply({"ok": True})

        def do_POST(self) -> None:
            batch = protocol.decode_batch(self._body())
            with recorder.lock:
                recorder.batches.append((self.path.split("/")[3], batch))
                commands = list(recorder.commands)
            self._reply({"accepted": len(batch["records"]), "commands": commands})

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length", 0))
            return protocol.loads(self.rfile.read(length), protocol.content_type_of(self.headers["Content-Type"]))

        def _reply(self, obj: Any) -> None:
            body = protocol.dumps(obj, protocol.MSGPACK)
            self.send_response(200)
            self.send_header("Content-Type", protocol.MSGPACK)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
