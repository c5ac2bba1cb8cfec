"""The client's one way to speak HTTP to the service: :class:`HttpTransport`, and :class:`MockTransport`
for tests.

A transport never raises for a failed exchange: it answers a :class:`Reply` whose ``status`` is the HTTP
status, or 0 when no HTTP answer came back (refused, reset, timed out), with the reason in ``error``. The
Monitor's sender and command channel and the ``nanwatch`` CLI all go through it.

:class:`HttpTransport` is the standard library's ``http.client`` over keep-alive connections, one per
calling thread (the sender and the command channel each keep theirs). The standard library rather than
httpx: a training job installs the client, and it should cost the job nothing but numpy and msgpack.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

__all__ = ["HttpTransport", "MockTransport", "Reply", "Request", "Transport"]

_RETRY_STATUSES: Final = frozenset({0, 408, 429})  # 0: no HTTP answer at all (refused, timeout, reset)


@dataclass(frozen=True)
class Request:
    """One request as a transport receives it (path relative to the service URL, e.g. ``/v1/runs/r``)."""

    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0


@dataclass(frozen=True)
class Reply:
    """The service's answer; ``status`` 0 when no HTTP answer came back, and ``error`` says why."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """No answer, a timeout, too many requests, or a 5xx: the same request may succeed later."""
        return self.status in _RETRY_STATUSES or self.status >= 500


class Transport(Protocol):
    """What the client needs from HTTP."""

    def request(self, request: Request) -> Reply:
        """Send ``request``; never raises for a failed exchange."""

    def close(self) -> None:
        """Release the connections."""


class HttpTransport:
    """HTTP/1.1 to ``url`` (``http://`` or ``https://``), keep-alive, one connection per calling thread.

    ``token`` is sent as ``Authorization: Bearer``; every request also carries ``User-Agent``.
    """

    def __init__(self, url: str, *, token: str | None = None, user_agent: str = "nanwatch-client") -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"nanwatch: service URL must look like http://host:8000, got {url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"User-Agent": user_agent, **({"Authorization": f"Bearer {token}"} if token else {})}
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(self, request: Request) -> Reply:
        """Send ``request`` on this thread's connection; one retry on a fresh connection when a kept-alive
        one turns out to be closed (the server may drop an idle connection at any time)."""
        reused = getattr(self._local, "connection", None) is not None
        reply = self._exchange(request)
        if reply.status == 0 and reused and reply.error.startswith(_STALE):
            reply = self._exchange(request)
        return reply

    def _exchange(self, request: Request) -> Reply:
        connection = self._connection(request.timeout)
        if connection is None:
            return Reply(0, error="the transport is closed")
        try:
            connection.request(request.method, self._prefix + request.path, request.body, self._with(request))
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(connection)
            return Reply(0, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        if response.will_close:
            self._drop(connection)
        return Reply(response.status, body, response.getheader("Content-Type"))

    def _with(self, request: Request) -> dict[str, str]:
        headers = {**self._headers, **request.headers}
        if request.body or request.method in ("POST", "PUT"):
            headers["Content-Length"] = str(len(request.body))
        return headers

    def _connection(self, timeout: float) -> http.client.HTTPConnection | None:
        if self._closed:
            return None
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=timeout)
            with self._lock:
                if self._closed:
                    return None  # no new connection after close(): nobody would close it
                self._all.append(connection)
            self._local.connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)

    def close(self) -> None:
        """Close every connection this transport opened, on any thread; a request waiting on one of them
        (the command channel's long poll) ends at once with a failed Reply."""
        with self._lock:
            connections, self._all, self._closed = self._all, [], True
        for connection in connections:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            connection.close()


_STALE: Final = ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError", "ConnectionAbortedError")


class MockTransport:
    """A transport that hands each request to ``handler`` and returns its reply, for tests (as httpx's
    ``MockTransport``): a test scripts the service's answers, or cuts the line, without patching."""

    def __init__(self, handler: Callable[[Request], Reply]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def request(self, request: Request) -> Reply:
        """Record ``request`` and answer what the handler says."""
        with self._lock:
            self.requests.append(request)
        return self.handler(request)

    def close(self) -> None:
        """Nothing to release."""
