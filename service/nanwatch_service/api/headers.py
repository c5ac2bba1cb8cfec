"""Security headers on every response, as a plain ASGI middleware (streamed responses pass untouched).

A response that sets one of these headers itself keeps its own (a page that needs a wider
Content-Security-Policy sets it). JSON and msgpack answers get ``default-src 'none'``: nothing in them is
ever meant to run in a browser. HTML keeps its own policy or gets none (the interactive docs at ``/docs``
load their scripts from a CDN), but is never framed.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
_CSP: Final = b"content-security-policy"
_NO_CONTENT: Final = b"default-src 'none'; frame-ancestors 'none'"
_NO_FRAMES: Final = b"frame-ancestors 'none'"


class SecurityHeaders:
    """Adds :data:`HEADERS` and a Content-Security-Policy to every HTTP response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _secured(list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, with_headers)


def _secured(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in headers}
    added = [(name, value) for name, value in HEADERS if name not in present]
    if _CSP not in present:
        content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
        added.append((_CSP, _NO_FRAMES if content_type.startswith(b"text/html") else _NO_CONTENT))
    return headers + added
