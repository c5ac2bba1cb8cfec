"""OpenAPI descriptions of the request bodies (validated by ``nanwatch.protocol``, not by pydantic,
so that NaN and infinities stay data and msgpack bodies are accepted too)."""

from __future__ import annotations

from typing import Any

from nanwatch import protocol

_FLOAT = {
    "oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}],
    "description": 'a float; in JSON non-finite values are the strings "NaN", "Infinity", "-Infinity"',
}

RUN_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "protocol": {"type": "integer", "enum": [protocol.PROTOCOL_VERSION]},
        "name": {"type": "string"},
        "team": {"type": "string"},
        "framework": {"type": "string", "examples": ["keras-3.15/tensorflow-2.21"]},
        "dtype_policy": {"type": "string", "enum": list(protocol.DTYPE_POLICIES)},
        "halt_on": {"type": "string", "enum": list(protocol.HALT_POLICIES), "default": "critical"},
        "stable_loss": {
            "type": "boolean",
            "default": False,
            "description": "the loss cannot turn a probability of exactly 0 or 1 into NaN/Inf (a built-in "
            "cross-entropy that clips probabilities or takes logits): saturation is then never critical",
        },
        "layers": {
            "type": "array",
            "description": "the layer table in forward order; per-layer arrays of step records follow it",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "activation": {"type": ["string", "null"]},
                    "params": {"type": "integer", "minimum": 0},
                    "dtype": {
                        "enum": list(protocol.LAYER_DTYPES),
                        "description": "the layer's compute dtype; without it, under a mixed policy the last "
                        "layer is taken to compute in float32 and the others in the half type",
                    },
                },
            },
        },
        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

RECORD: dict[str, Any] = {
    "type": "object",
    "required": ["step"],
    "properties": {
        "step": {"type": "integer", "minimum": 0},
        "skipped": {"type": "boolean"},
        **{name: _FLOAT for name in protocol.SCALAR_FIELDS},
        "layers": {
            "type": "object",
            "description": "columnar per-layer statistics, one entry per layer of the layer table",
            "properties": {name: {"type": "array", "items": _FLOAT} for name in protocol.LAYER_FIELDS},
        },
    },
}

BATCH_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "protocol": {"type": "integer", "enum": [protocol.PROTOCOL_VERSION]},
        "attempt": {"type": "string", "description": "the client process's id; a resumed job sends a new one"},
        "records": {"type": "array", "items": RECORD, "maxItems": protocol.MAX_RECORDS},
        "acks": {
            "type": "array",
            "items": {"type": "object", "properties": {"id": {"type": "string"}, "step": {"type": "integer"}}},
        },
        "dropped": {"type": "integer", "minimum": 0, "description": "records the client dropped so far"},
        "final": {"type": "boolean", "description": "the job ended; the run reads as finished"},
        "events": {
            "type": "array",
            "description": "events the job reports itself (a recovery), stored with the run's events",
            "items": {
                "type": "object",
                "required": ["step", "kind"],
                "properties": {
                    "step": {"type": "integer", "minimum": 0},
                    "kind": {"type": "string", "pattern": protocol.EVENT_KIND_PATTERN.pattern},
                    "message": {"type": "string"},
                    "details": {"type": "object", "additionalProperties": {"type": ["number", "string"]}},
                },
            },
        },
    },
}

HALT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["reason"],
    "properties": {"reason": {"type": "string", "maxLength": 4096}},
}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a body accepted as JSON or msgpack."""
    content = {protocol.JSON: {"schema": schema}, protocol.MSGPACK: {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}
