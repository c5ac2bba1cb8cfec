"""The service in a thread of this process, on a free 127.0.0.1 port: what ``nanwatch demo`` starts when
no ``--url`` is given (``local_service``), and the test suite's in-process server (``serve_in_thread``).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nanwatch_service.settings import Settings


def server(app: Any, **config: Any) -> Any:
    """uvicorn's server for ``app``, which lets the command channels' long polls go before it shuts down:
    uvicorn waits for every request in flight, and a long poll would hold the shutdown up for its ``wait``."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            engine = getattr(app.state, "engine", None)
            if engine is not None:
                engine.release_waiters()
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, lifespan="on", **config))


@contextlib.contextmanager
def serve_in_thread(app: Any, start_timeout: float = 60.0, stop_timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on real uvicorn in a daemon thread; yield its URL once it serves, stop it afterwards."""
    sock = loopback_socket()
    uvicorn_server = server(app, log_level="warning")
    thread = threading.Thread(
        target=uvicorn_server.run, kwargs={"sockets": [sock]}, name="nanwatch-service", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not uvicorn_server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped before it started serving; its log says why")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start serving within {start_timeout:g} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=stop_timeout)
        sock.close()


def loopback_socket() -> socket.socket:
    """A socket bound to a free 127.0.0.1 port (``SO_REUSEADDR``), ready to listen or to be closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def local_service() -> Iterator[str]:
    """The service with SQLite in a temporary directory; yield its URL, then stop it and remove the directory."""
    from nanwatch_service.app import create_app

    with tempfile.TemporaryDirectory(prefix="nanwatch-demo-") as tmp:
        app = create_app(Settings(db=str(Path(tmp) / "nanwatch.db")))
        with serve_in_thread(app) as url:
            yield url
