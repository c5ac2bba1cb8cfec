"""The service ``nanwatch demo`` starts when no ``--url`` is given: real uvicorn in a thread of the
command, on a free 127.0.0.1 port, with SQLite in a temporary directory. The job it watches is
``nanwatch.keras.demo``; the command itself is ``_demo`` in ``cli``.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from nanwatch_service.settings import Settings


@contextlib.contextmanager
def local_service(start_timeout: float = 60.0) -> Iterator[str]:
    """Yield the URL of a started service; stop it and remove its directory afterwards."""
    import uvicorn

    from nanwatch_service.app import create_app

    with tempfile.TemporaryDirectory(prefix="nanwatch-demo-") as tmp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        app = create_app(Settings(db=str(Path(tmp) / "nanwatch.db")))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="nanwatch-demo-service")
        thread.start()
        try:
            deadline = time.monotonic() + start_timeout
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the demo's service did not start; its log is above")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
