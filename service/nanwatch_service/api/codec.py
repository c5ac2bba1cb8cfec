"""Content negotiation: bodies in msgpack or JSON, non-finite floats kept as data in both."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from nanwatch import protocol
from nanwatch_service.api.errors import LimitExceeded, detail


async def read_message(request: Request, limit: int) -> Any:
    """Read and parse the body (msgpack or JSON by Content-Type), refusing more than ``limit`` bytes (413);
    a body that does not parse raises ProtocolError (415 for its content type, else 422)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    content_type = protocol.content_type_of(request.headers.get("content-type"))
    return protocol.loads(b"".join(chunks), content_type)


def error_detail(exc: protocol.ProtocolError) -> list[dict[str, Any]]:
    """FastAPI's 422 shape, with the offending field's path spelled out."""
    return detail(exc.field, exc.message)


def respond(request: Request, payload: Any, status_code: int = 200) -> Response:
    """Encode ``payload`` as the client asked (Accept), else as it spoke (Content-Type), else JSON."""
    content_type = _reply_type(request)
    return Response(protocol.dumps(payload, content_type), status_code=status_code, media_type=content_type)


def _reply_type(request: Request) -> str:
    for header in (request.headers.get("accept"), request.headers.get("content-type")):
        if header and protocol.MSGPACK in header:
            return protocol.MSGPACK
    return protocol.JSON


def _too_large(limit: int) -> LimitExceeded:
    message = f"larger than {limit} bytes; send fewer records per request"
    return LimitExceeded(413, "", message, "NANWATCH_MAX_BODY_BYTES", limit)
