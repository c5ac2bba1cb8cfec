"""The app's OpenAPI document as this service is configured: the limits the settings set, answers in
msgpack as well as JSON (``/v1`` answers in the encoding asked for), and the bearer scheme when tokens are
configured (every operation but the probes and ``/metrics`` then needs one)."""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI

from nanwatch import protocol

OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


def install(app: FastAPI, limits: protocol.Limits, tokens_required: bool) -> None:
    """Make ``app.openapi()`` describe ``limits`` and, with ``tokens_required``, the bearer tokens."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            _apply_limits(document, limits)
            _answer_in_msgpack_too(document)
            if tokens_required:
                _require_bearer(document)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _apply_limits(node: Any, limits: protocol.Limits) -> None:
    """Turn each ``"x-limit": NAME`` into ``maxItems`` (arrays) or ``maxLength`` with the limit's value."""
    if isinstance(node, dict):
        name = node.pop("x-limit", None)
        if name is not None:
            kind = node.get("type")
            key = "maxItems" if kind == "array" or (isinstance(kind, list) and "array" in kind) else "maxLength"
            node[key] = getattr(limits, name)
        for value in node.values():
            _apply_limits(value, limits)
    elif isinstance(node, list):
        for value in node:
            _apply_limits(value, limits)


def _answer_in_msgpack_too(document: dict[str, Any]) -> None:
    for path, operations in document.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                for code, answer in operation.get("responses", {}).items():
                    content = answer.get("content", {})
                    if str(code).startswith("2") and protocol.JSON in content:
                        content.setdefault(protocol.MSGPACK, content[protocol.JSON])


def _require_bearer(document: dict[str, Any]) -> None:
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "a token of the service's tokens file (nanwatch tokens add), or NANWATCH_TOKEN",
    }
    for path, operations in document.get("paths", {}).items():
        if path not in OPEN_PATHS:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
