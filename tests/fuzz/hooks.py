"""Schemathesis hooks for the fuzz test (``hooks`` in schemathesis.toml): bodies in msgpack as well as JSON."""

from __future__ import annotations

from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/msgpack")
def to_msgpack(ctx: Any, value: Any) -> bytes:
    """Encode a generated body as the service's msgpack (bytes for bins, as the client sends them)."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@schemathesis.deserializer("application/msgpack")
def from_msgpack(ctx: Any, response: Any) -> Any:
    """Decode a msgpack answer, so that its schema is checked as a JSON one is."""
    return msgpack.unpackb(response.content, raw=False)
