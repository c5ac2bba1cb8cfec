"""Wire protocol v1, shared by the client and the service.

Three messages travel between a training job and the service:

- a **run registration** (``PUT /v1/runs/{run_id}``): name, team, framework, dtype policy, the layer
  table in forward order, the halt policy and ``stable_loss`` (true when the training loss cannot turn
  a probability of exactly 0 or 1 into a non-finite value: Keras' built-in cross-entropies, which clip
  probabilities before the log or take logits);
- a **step batch** (``POST /v1/runs/{run_id}/steps``): step records, acknowledgements of commands, the
  client's drop counter, a ``final`` flag when the job ends and, optionally, ``events`` the job itself
  reports (``{"step", "kind", "message", "details"}``, e.g. a recovery: what it rolled back to);
- the **ingest reply**: ``{"accepted": n, "commands": [...]}``, which is how halts reach the job.

A step record holds scalars (``step``, ``wall_time``, ``loss``, ``lr``, ``grad_norm``, ``loss_scale``,
``skipped``) and per-layer statistics under ``layers``, columnar: one array per statistic, one entry per
layer of the run's layer table, in that order. Any optional field may be absent; a layer statistic that
does not apply to a layer (a weight norm on a layer without weights) is sent as 0.0 and ignored by the
service, which knows from the layer table (``params``) which layers hold weights.

Encodings: ``application/msgpack`` carries IEEE doubles as they are (bit for bit, NaN, ±Inf, -0.0 and
subnormals included); ``application/json`` carries non-finite floats as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` in both directions, never as ``null`` or a bare ``NaN`` token.

``decode_*`` functions validate and normalise; a bad message raises :class:`ProtocolError` naming the
offending field by its path (``records[3].layers.act_std[7]``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import msgpack

PROTOCOL_VERSION: Final = 1

MSGPACK: Final = "application/msgpack"
JSON: Final = "application/json"

RUN_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
ATTEMPT_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")

HALT_POLICIES: Final = ("critical", "warning", "never")
DTYPE_POLICIES: Final = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16", "float64")
LAYER_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
"""A layer's compute dtype (optional in the layer table; the Keras callback sends it)."""

SCALAR_FIELDS: Final = ("wall_time", "loss", "lr", "grad_norm", "loss_scale")
"""Optional float scalars of a step record (``step`` is a required int, ``skipped`` an optional bool)."""

LAYER_FIELDS: Final = (
    "grad_norm",  # L2 norm of the layer's gradients (scale-safe: non-finite only if a gradient is)
    "grad_mean_abs",  # mean |g| over the layer's gradients
    "weight_norm",  # L2 norm of the layer's weights after the update (scale-safe)
    "update_norm",  # ‖Δw‖ of this step's update
    "act_mean",  # mean of the layer's output
    "act_std",  # standard deviation of the layer's output
    "act_max_abs",  # max |output| over finite entries; +Inf if any output is ±Inf
    "act_frac_zero",  # fraction of outputs exactly 0
    "act_frac_nonfinite",  # fraction of outputs NaN or ±Inf; NaN: some are, the share was not measured
    "act_frac_saturated",  # fraction within 1e-7 of a bounded activation's bounds (sigmoid/tanh/softmax)
    "act_frac_zero_var",  # fraction of rows (samples) whose output has zero variance
    "in_max_abs",  # max |input| of the layer, for its gain (output vs input magnitude)
)
"""Per-layer statistics of a step record, each an array as long as the layer table."""

COMMAND_ACTIONS: Final = ("halt",)
COMMAND_SOURCES: Final = ("detector", "operator", "alertmanager", "client")

_NONFINITE_TO_JSON: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ProtocolError(ValueError):
    """A message does not follow the protocol; ``field`` is the path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --------------------------------------------------------------------------- encoding


def json_safe(value: Any) -> Any:
    """Return ``value`` with every non-finite float replaced by its JSON string form."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(message: Any, content_type: str = MSGPACK) -> bytes:
    """Encode ``message`` as msgpack (floats as float64) or JSON (non-finite floats as strings)."""
    if content_type == MSGPACK:
        return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]
    if content_type == JSON:
        return json.dumps(json_safe(message), allow_nan=False, separators=(",", ":")).encode()
    raise ProtocolError("content-type", f"unsupported {content_type!r}; use {MSGPACK} or {JSON}")


def loads(body: bytes, content_type: str = MSGPACK) -> Any:
    """Decode a body; JSON's ``"NaN"``-style strings stay strings until a ``decode_*`` reads them."""
    try:
        if content_type == MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        if content_type == JSON:
            return json.loads(body, parse_constant=_reject_json_constant)
    except ProtocolError:
        raise
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError("body", f"not valid {content_type}: {exc}") from None
    raise ProtocolError("content-type", f"unsupported {content_type!r}; use {MSGPACK} or {JSON}")


def _reject_json_constant(token: str) -> float:
    raise ProtocolError("body", f'bare {token} is not JSON; send the string "{token}"')


def content_type_of(header: str | None) -> str:
    """Map a Content-Type/Accept header to MSGPACK or JSON (JSON when absent or ``*/*``)."""
    base = (header or JSON).split(";")[0].strip().lower()
    if base in (MSGPACK, "application/x-msgpack"):
        return MSGPACK
    if base in (JSON, "*/*", ""):
        return JSON
    raise ProtocolError("content-type", f"unsupported {base!r}; use {MSGPACK} or {JSON}")


# --------------------------------------------------------------------------- field readers


def _float(value: Any, field: str) -> float:
    if type(value) is float:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value in _NONFINITE_TO_JSON:
        return _NONFINITE_TO_JSON[value]
    raise ProtocolError(field, f'expected a number or "NaN"/"Infinity"/"-Infinity", got {_show(value)}')


def _int(value: Any, field: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(field, f"expected an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise ProtocolError(field, f"must be >= {minimum}, got {value}")
    if value > 2**62:
        raise ProtocolError(field, f"must be < 2**62, got {value}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(field, f"expected true or false, got {_show(value)}")
    return value


def _str(value: Any, field: str, max_len: int = 256, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ProtocolError(field, f"expected a string, got {_show(value)}")
    if len(value) > max_len:
        raise ProtocolError(field, f"longer than {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise ProtocolError(field, f"{value!r} does not match {pattern.pattern}")
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ProtocolError(field, f"expected one of {', '.join(choices)}, got {_show(value)}")
    return str(value)


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(field, f"expected an object, got {_show(value)}")
    return value


def _list(value: Any, field: str, max_len: int) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(field, f"expected an array, got {_show(value)}")
    if len(value) > max_len:
        raise ProtocolError(field, f"more than {max_len} entries")
    return value


def _float_list(value: Any, field: str, length: int | None) -> list[float]:
    items = _list(value, field, 1_000_000)
    if length is not None and len(items) != length:
        raise ProtocolError(field, f"expected {length} entries (one per layer), got {len(items)}")
    if all(type(v) is float for v in items):  # the msgpack fast path
        return items
    return [_float(v, f"{field}[{i}]") for i, v in enumerate(items)]


def _no_unknown(obj: Mapping[str, Any], field: str, known: tuple[str, ...] | frozenset[str]) -> None:
    for key in obj:
        if key not in known:
            where = f"{field}.{key}" if field else str(key)
            raise ProtocolError(where, f"unknown field; expected one of {', '.join(sorted(known))}")


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it matches ``[A-Za-z0-9._-]{1,128}``, else raise ProtocolError."""
    return _str(run_id, "run_id", 128, RUN_ID_PATTERN)


# --------------------------------------------------------------------------- messages

_RUN_KEYS: Final = frozenset(
    {"protocol", "name", "team", "framework", "dtype_policy", "layers", "halt_on", "stable_loss", "meta"}
)
_LAYER_KEYS: Final = frozenset({"name", "kind", "activation", "params", "dtype"})
_BATCH_KEYS: Final = frozenset({"protocol", "attempt", "records", "acks", "dropped", "final", "events"})
_RECORD_KEYS: Final = frozenset({"step", "skipped", "layers", *SCALAR_FIELDS})
_ACK_KEYS: Final = frozenset({"id", "step"})
_EVENT_KEYS: Final = frozenset({"step", "kind", "message", "details"})
EVENT_KIND_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_LAYERS: Final = 4096
MAX_RECORDS: Final = 10_000


def _check_protocol(obj: Mapping[str, Any]) -> None:
    version = obj.get("protocol", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("protocol", f"this service speaks protocol {PROTOCOL_VERSION}, got {version!r}")


def decode_run(obj: Any) -> dict[str, Any]:
    """Validate a run registration; return it normalised (absent optional fields filled in)."""
    obj = _mapping(obj, "body")
    _no_unknown(obj, "", _RUN_KEYS)
    _check_protocol(obj)
    run: dict[str, Any] = {"protocol": PROTOCOL_VERSION}
    for key in ("name", "team", "framework"):
        run[key] = None if obj.get(key) is None else _str(obj[key], key)
    policy = obj.get("dtype_policy")
    run["dtype_policy"] = "float32" if policy is None else _choice(policy, "dtype_policy", DTYPE_POLICIES)
    run["halt_on"] = _choice(obj.get("halt_on", "critical"), "halt_on", HALT_POLICIES)
    run["stable_loss"] = _bool(obj.get("stable_loss", False), "stable_loss")
    run["layers"] = [
        _decode_layer(v, f"layers[{i}]") for i, v in enumerate(_list(obj.get("layers", []), "layers", MAX_LAYERS))
    ]
    meta = _mapping(obj.get("meta", {}), "meta")
    run["meta"] = {_str(k, "meta", 64): _str(v, f"meta.{k}", 1024) for k, v in meta.items()}
    return run


def _decode_layer(obj: Any, field: str) -> dict[str, Any]:
    obj = _mapping(obj, field)
    _no_unknown(obj, field, _LAYER_KEYS)
    if "name" not in obj:
        raise ProtocolError(f"{field}.name", "required")
    row = {
        "name": _str(obj["name"], f"{field}.name"),
        "kind": _str(obj.get("kind") or "Layer", f"{field}.kind"),
        "activation": None if obj.get("activation") is None else _str(obj["activation"], f"{field}.activation"),
        "params": _int(obj.get("params", 0), f"{field}.params", minimum=0),
    }
    if obj.get("dtype") is not None:  # kept only when sent: tables from older clients stay as they were
        row["dtype"] = _choice(obj["dtype"], f"{field}.dtype", LAYER_DTYPES)
    return row


def decode_batch(obj: Any, n_layers: int | None = None) -> dict[str, Any]:
    """Validate a step batch; ``n_layers`` (the run's layer table length) checks the layer arrays."""
    obj = _mapping(obj, "body")
    _no_unknown(obj, "", _BATCH_KEYS)
    _check_protocol(obj)
    records = _list(obj.get("records", []), "records", MAX_RECORDS)
    acks = _list(obj.get("acks", []), "acks", 1000)
    events = _list(obj.get("events", []), "events", 1000)
    return {
        "protocol": PROTOCOL_VERSION,
        "attempt": _str(obj.get("attempt", "0"), "attempt", 64, ATTEMPT_PATTERN),
        "records": [decode_record(r, f"records[{i}]", n_layers) for i, r in enumerate(records)],
        "acks": [_decode_ack(a, f"acks[{i}]") for i, a in enumerate(acks)],
        "dropped": _int(obj.get("dropped", 0), "dropped", minimum=0),
        "final": _bool(obj.get("final", False), "final"),
        "events": [_decode_client_event(e, f"events[{i}]") for i, e in enumerate(events)],
    }


def _decode_client_event(obj: Any, field: str) -> dict[str, Any]:
    """An event the job reports: ``step``, ``kind`` (``recovery``), ``message`` and flat ``details``
    (numbers or strings)."""
    obj = _mapping(obj, field)
    _no_unknown(obj, field, _EVENT_KEYS)
    details = _mapping(obj.get("details", {}), f"{field}.details")
    if len(details) > 64:
        raise ProtocolError(f"{field}.details", "more than 64 entries")
    return {
        "step": _int(obj.get("step"), f"{field}.step", minimum=0),
        "kind": _str(obj.get("kind"), f"{field}.kind", 64, EVENT_KIND_PATTERN),
        "message": _str(obj.get("message", ""), f"{field}.message", 4096),
        "details": {_str(k, f"{field}.details", 64): _detail(v, f"{field}.details.{k}") for k, v in details.items()},
    }


def _detail(value: Any, field: str) -> float | int | str:
    if isinstance(value, str):
        return _str(value, field, 1024)
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(value, field)
    return _float(value, field)


def decode_record(obj: Any, field: str = "record", n_layers: int | None = None) -> dict[str, Any]:
    """Validate one step record; floats stay Python floats so msgpack round-trips bit for bit."""
    obj = _mapping(obj, field)
    _no_unknown(obj, field, _RECORD_KEYS)
    if "step" not in obj:
        raise ProtocolError(f"{field}.step", "required")
    record: dict[str, Any] = {"step": _int(obj["step"], f"{field}.step", minimum=0)}
    for key in SCALAR_FIELDS:
        if obj.get(key) is not None:
            record[key] = _float(obj[key], f"{field}.{key}")
    if obj.get("skipped") is not None:
        record["skipped"] = _bool(obj["skipped"], f"{field}.skipped")
    if obj.get("layers") is not None:
        layers = _mapping(obj["layers"], f"{field}.layers")
        _no_unknown(layers, f"{field}.layers", LAYER_FIELDS)
        record["layers"] = {k: _float_list(v, f"{field}.layers.{k}", n_layers) for k, v in layers.items()}
    return record


def _decode_ack(obj: Any, field: str) -> dict[str, Any]:
    obj = _mapping(obj, field)
    _no_unknown(obj, field, _ACK_KEYS)
    return {"id": _str(obj.get("id"), f"{field}.id", 64), "step": _int(obj.get("step"), f"{field}.step", 0)}


def decode_reply(obj: Any) -> dict[str, Any]:
    """Validate the service's ingest reply (what the client reads)."""
    obj = _mapping(obj, "reply")
    commands = _list(obj.get("commands", []), "commands", 1000)
    return {
        "accepted": _int(obj.get("accepted", 0), "accepted", 0),
        "commands": [decode_command(c, f"commands[{i}]") for i, c in enumerate(commands)],
    }


def decode_command(obj: Any, field: str = "command") -> dict[str, Any]:
    """Validate a command: id, action, reason, source, step decided at, at_step to stop at."""
    obj = _mapping(obj, field)
    return {
        "id": _str(obj.get("id"), f"{field}.id", 64),
        "action": _choice(obj.get("action"), f"{field}.action", COMMAND_ACTIONS),
        "reason": _str(obj.get("reason", ""), f"{field}.reason", 4096),
        "source": _choice(obj.get("source"), f"{field}.source", COMMAND_SOURCES),
        "step": None if obj.get("step") is None else _int(obj["step"], f"{field}.step", 0),
        "at_step": None if obj.get("at_step") is None else _int(obj["at_step"], f"{field}.at_step", 0),
    }
