"""OpenAPI descriptions of the request bodies (validated by ``nanwatch.protocol``, not by pydantic,
so that NaN and infinities stay data and msgpack bodies are accepted too).

Each schema says exactly what the decoder accepts: unknown fields are refused (``additionalProperties``
false), nullable fields say so, and a size the settings limit carries ``"x-limit": "<Limits field>"``,
which the app's OpenAPI document turns into ``maxLength``/``maxItems`` with the configured value (see
``api.openapi``). One thing JSON Schema cannot say: a record's per-layer arrays have one entry per layer of
the run's layer table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from nanwatch import protocol
from nanwatch.vocabulary import HaltPolicy
from nanwatch_service.store.base import BIGGEST

_FLOAT: Final = {
    "oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}],
    "description": 'a float; in JSON non-finite values are the strings "NaN", "Infinity", "-Infinity"',
}
_COUNT: Final = {"type": "integer", "minimum": 0, "maximum": BIGGEST}
_NAME: Final = {"type": "string", "x-limit": "name_chars"}
_OPTIONAL_NAME: Final = {"type": ["string", "null"], "x-limit": "name_chars"}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object schema that refuses fields it does not list."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    return schema | ({"required": list(required)} if required else {})


RUN_BODY: dict[str, Any] = _object(
    {
        "protocol": {"type": "integer", "enum": list(protocol.PROTOCOL_VERSIONS)},
        "name": _OPTIONAL_NAME,
        "team": {
            **_OPTIONAL_NAME,
            "description": "the owning team when no token is configured, or for a token of every team ('*'); "
            "otherwise the run belongs to the token's team, whatever this says",
        },
        "framework": {**_OPTIONAL_NAME, "examples": ["keras-3.15/tensorflow-2.21"]},
        "dtype_policy": {"enum": [*protocol.DTYPE_POLICIES, None], "default": "float32"},
        "halt_on": {"type": "string", "enum": [str(p) for p in HaltPolicy], "default": str(HaltPolicy.CRITICAL)},
        "stable_loss": {
            "type": "boolean",
            "default": False,
            "description": "the loss cannot turn a probability of exactly 0 or 1 into NaN/Inf (a built-in "
            "cross-entropy that clips probabilities or takes logits): saturation is then never critical",
        },
        "layers": {
            "type": "array",
            "x-limit": "layers",
            "description": "the layer table in forward order; per-layer arrays of step records follow it",
            "items": _object(
                {
                    "name": _NAME,
                    "kind": _OPTIONAL_NAME,
                    "activation": _OPTIONAL_NAME,
                    "params": _COUNT,
                    "dtype": {
                        "enum": [*protocol.LAYER_DTYPES, None],
                        "description": "the layer's compute dtype; without it, under a mixed policy the last "
                        "layer is taken to compute in float32 and the others in the half type",
                    },
                },
                required=("name",),
            ),
        },
        "meta": {
            "type": "object",
            "propertyNames": {"x-limit": "name_chars"},
            "additionalProperties": {"type": "string", "x-limit": "text_chars"},
        },
    }
)

RECORD: dict[str, Any] = _object(
    {
        "step": _COUNT,
        "skipped": {"type": ["boolean", "null"]},
        **{name: {"oneOf": [*_FLOAT["oneOf"], {"type": "null"}]} for name in protocol.SCALAR_FIELDS},
        "layers": {
            "type": ["object", "null"],
            "description": "columnar per-layer statistics, one entry per layer of the layer table",
            "properties": {name: {"type": "array", "items": _FLOAT} for name in protocol.LAYER_FIELDS},
            "additionalProperties": False,
        },
    },
    required=("step",),
)

BATCH_BODY: dict[str, Any] = _object(
    {
        "protocol": {
            "type": "integer",
            "enum": [1],
            "description": "protocol 1 (records as maps); protocol 2 (packed columns) travels as msgpack only",
        },
        "attempt": {
            "type": "string",
            "pattern": f"^{protocol.ATTEMPT_PATTERN.pattern}$",
            "description": "the client process's id; a resumed job sends a new one",
        },
        "records": {"type": "array", "items": RECORD, "x-limit": "records"},
        "acks": {
            "type": "array",
            "maxItems": 1000,
            "items": _object({"id": {"type": "string", "maxLength": 64}, "step": _COUNT}, required=("id", "step")),
        },
        "dropped": {**_COUNT, "description": "records the client dropped so far"},
        "final": {"type": "boolean", "description": "the job ended; the run reads as finished"},
        "events": {
            "type": "array",
            "maxItems": 1000,
            "description": "events the job reports itself (a recovery), stored with the run's events",
            "items": _object(
                {
                    "step": _COUNT,
                    "kind": {"type": "string", "pattern": f"^{protocol.EVENT_KIND_PATTERN.pattern}$"},
                    "message": {"type": "string", "maxLength": 4096},
                    "details": {
                        "type": "object",
                        "maxProperties": 64,
                        "propertyNames": {"maxLength": 64},
                        "additionalProperties": {"type": ["number", "string"], "maxLength": 1024},
                    },
                },
                required=("step", "kind"),
            ),
        },
    }
)

HALT_BODY: dict[str, Any] = _object(
    {"reason": {"type": "string", "minLength": 1, "x-limit": "text_chars"}}, required=("reason",)
)

_STRINGS: Final = {"type": "object", "additionalProperties": {"type": "string", "x-limit": "name_chars"}}
ALERTMANAGER_BODY: dict[str, Any] = {
    "type": "object",
    "description": "Alertmanager's webhook payload, version 4 (fields not listed here are ignored)",
    "required": ["version", "alerts"],
    "properties": {
        "version": {"type": "string", "enum": ["4"]},
        "alerts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["status", "labels", "fingerprint", "startsAt"],
                "properties": {
                    "status": {"type": "string", "enum": ["firing", "resolved"]},
                    "labels": _STRINGS,
                    "annotations": {**_STRINGS, "additionalProperties": {"type": "string", "x-limit": "text_chars"}},
                    "fingerprint": {"type": "string", "minLength": 1},
                    "startsAt": {"type": "string", "minLength": 1},
                    "endsAt": {"type": ["string", "null"]},
                },
            },
        },
    },
}


def list_pattern(names: Sequence[str]) -> str:
    """The pattern of a comma-separated list of ``names`` (a ``fields`` query), for the OpenAPI schema and
    FastAPI's validation alike: anything else is a 422 naming the parameter."""
    one = f"(?:{'|'.join(re.escape(name) for name in names)})"
    return f"^{one}(?:,{one})*$"


def request_body(schema: dict[str, Any], *, msgpack: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a body accepted as JSON (and described as msgpack too when ``msgpack``)."""
    content = {protocol.JSON: {"schema": schema}}
    if msgpack:
        content[protocol.MSGPACK] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}
