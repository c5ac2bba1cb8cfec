"""Schemathesis hooks for the fuzz test (``hooks`` in schemathesis.toml): bodies in msgpack as well as JSON."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/msgpack")
def to_msgpack(ctx: Any, value: Any) -> bytes:
    """Encode a generated body as the service's msgpack (bytes for bins, as the client sends them). msgpack
    has no integer past 64 bits: a larger generated one travels as the float it rounds to (JSON bodies
    carry them as they are, and the service refuses both the same way)."""
    packed: bytes = msgpack.packb(_packable(value), use_bin_type=True)
    return packed


def _packable(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value) if abs(value) < 2**1023 else math.copysign(math.inf, value)
    if isinstance(value, dict):
        return {k: _packable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_packable(v) for v in value]
    return value


@schemathesis.deserializer("application/msgpack")
def from_msgpack(ctx: Any, response: Any) -> Any:
    """Decode a msgpack answer, so that its schema is checked as a JSON one is."""
    return msgpack.unpackb(response.content, raw=False)
