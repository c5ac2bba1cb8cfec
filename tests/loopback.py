"""A real HTTP server on 127.0.0.1 for tests that stand in for the service or probe the client's transport."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

Server = TypeVar("Server", bound="LoopbackServer")


class LoopbackServer:
    """``handler`` served on 127.0.0.1 (``port``, default a free one) by a thread of its own: ``start()`` /
    ``stop()``, or use as a context manager. The handler reaches its owner as ``self.server.owner``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0, name: str = "loopback-http") -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    def start(self: Server) -> Server:
        """Serve from now on."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket, and wait for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def __enter__(self: Server) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
