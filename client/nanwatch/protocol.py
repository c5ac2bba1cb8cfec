"""Wire protocol, shared by the client and the service (protocol 2; protocol 1 stays accepted).

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
``skipped``) and per-layer statistics (:data:`LAYER_FIELDS`), one entry per layer of the run's layer
table, in that order. Any optional field may be absent; a layer statistic that does not apply to a layer
(a weight norm on a layer without weights) is sent as 0.0 and ignored by the service, which knows from
the layer table (``params``) which layers hold weights.

Protocol 2 (msgpack only; what :func:`encode_batch` builds) carries a batch's records as columns
(:class:`~nanwatch.columns.StepColumns`): ``steps`` packed little-endian int64, ``scalars`` (the names,
once per batch) with ``scalar_values`` packed little-endian float64 ``steps × scalars``, ``layer_stats``
(the names) with ``n_layers`` and ``layer_values`` packed float64 ``steps × layers × statistics``, and an
optional ``present`` (one byte 0/1 per step and scalar-then-statistic, when some record lacks a value; an
absent value is never spelled NaN, which is data). ``dtype``, when sent, must be ``"<f8"``. The service
views the arrays with ``numpy.frombuffer``, so a batch decodes without a Python float per value.
Protocol 1 carries ``records`` as maps, in msgpack or JSON.

Encodings: ``application/msgpack`` carries IEEE doubles as they are (bit for bit, NaN, ±Inf, -0.0 and
subnormals included); ``application/json`` carries non-finite floats as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` in both directions, never as ``null`` or a bare ``NaN`` token.

``decode_*`` functions validate and normalise; a bad message raises :class:`ProtocolError` naming the
offending field by its path (``records[3].layers.act_std[7]``, ``layer_values``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from nanwatch.columns import SCALAR_COLUMNS as SCALAR_COLUMNS
from nanwatch.columns import StepColumns as StepColumns
from nanwatch.fields import LAYER_FIELDS as LAYER_FIELDS
from nanwatch.fields import SCALAR_FIELDS as SCALAR_FIELDS
from nanwatch.vocabulary import HaltPolicy

PROTOCOL_VERSION: Final = 2
PROTOCOL_VERSIONS: Final = (1, 2)
"""Step batches of both are accepted; registrations and replies are the same in both."""

MSGPACK: Final = "application/msgpack"
JSON: Final = "application/json"

RUN_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
ATTEMPT_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")

HALT_POLICIES: Final = tuple(HaltPolicy)
DTYPE_POLICIES: Final = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16", "float64")
LAYER_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
"""A layer's compute dtype (optional in the layer table; the Keras callback sends it)."""

COMMAND_ACTIONS: Final = ("halt",)
COMMAND_SOURCES: Final = ("detector", "operator", "alertmanager", "client")

_NONFINITE_TO_JSON: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ProtocolError(ValueError):
    """A message does not follow the protocol; ``field`` is the path of the offending value. ``limit``
    names the :class:`Limits` field a message exceeded (None when it is malformed instead)."""

    def __init__(self, field: str, message: str, limit: str | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.limit = limit


MAX_LAYERS: Final = 4096
MAX_RECORDS: Final = 10_000
MAX_NAME_CHARS: Final = 256
MAX_TEXT_CHARS: Final = 4096


@dataclass(frozen=True)
class Limits:
    """How large a message may be; the service configures tighter ones (each is a setting), never larger.

    ``records``: step records per batch; ``layers``: entries of a run's layer table; ``name_chars``: a
    registration's names (run name, team, framework, a layer's name, kind and activation, meta keys);
    ``text_chars``: free text (meta values)."""

    records: int = MAX_RECORDS
    layers: int = MAX_LAYERS
    name_chars: int = MAX_NAME_CHARS
    text_chars: int = MAX_TEXT_CHARS


DEFAULT_LIMITS: Final = Limits()


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
    """Decode a body; JSON's ``"NaN"``-style strings stay strings until a ``decode_*`` reads them. Every
    string of the result is valid Unicode (a JSON escape of a lone surrogate is refused), and a body nested
    too deeply to parse is a ProtocolError like any other bad body."""
    try:
        if content_type == MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        if content_type == JSON:
            message = json.loads(body, parse_constant=_reject_json_constant)
            if _SURROGATE_ESCAPE.search(body):
                _refuse_lone_surrogates(message, "body")
            return message
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("body", "nested too deeply; send a flat message as the API describes") from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError("body", f"not valid {content_type}: {exc}") from None
    raise ProtocolError("content-type", f"unsupported {content_type!r}; use {MSGPACK} or {JSON}")


_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
"""Where a JSON body may hold a lone surrogate: only a ``\\uD800``-``\\uDFFF`` escape makes one."""


def _refuse_lone_surrogates(value: Any, field: str) -> None:
    """Raise ProtocolError at the first string (key or value) that is not valid Unicode."""
    stack = [(value, field)]
    while stack:  # iterative: the message may be deep
        item, where = stack.pop()
        if isinstance(item, str):
            _check_unicode(item, where)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_unicode(key, where)
                stack.append((inner, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]") for i, inner in enumerate(item))


def _check_unicode(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(field, "holds a lone UTF-16 surrogate (\\uD800-\\uDFFF unpaired): not text") from None


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
        try:
            return float(value)
        except OverflowError:  # past float64's range: infinite, as a JSON 1e400 parses
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and value in _NONFINITE_TO_JSON:
        return _NONFINITE_TO_JSON[value]
    raise ProtocolError(field, f'expected a number or "NaN"/"Infinity"/"-Infinity", got {_show(value)}')


def _int(value: Any, field: str, minimum: int | None = None) -> int:
    if type(value) is float and value.is_integer():  # JSON does not tell 3.0 from 3
        value = int(value)
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


def _str(
    value: Any, field: str, max_len: int = 256, pattern: re.Pattern[str] | None = None, limit: str | None = None
) -> str:
    if not isinstance(value, str):
        raise ProtocolError(field, f"expected a string, got {_show(value)}")
    if len(value) > max_len:
        raise ProtocolError(field, f"longer than {max_len} characters", limit)
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


def _list(value: Any, field: str, max_len: int, limit: str | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(field, f"expected an array, got {_show(value)}")
    if len(value) > max_len:
        raise ProtocolError(field, f"more than {max_len} entries", limit)
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


def _check_protocol(obj: Mapping[str, Any], versions: tuple[int, ...] = PROTOCOL_VERSIONS) -> int:
    version = obj.get("protocol", 1)
    if type(version) is not int or version not in versions:
        spoken = " and ".join(map(str, versions))
        raise ProtocolError("protocol", f"this service speaks protocol {spoken} here, got {_show(version)}")
    return version


def decode_run(obj: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Validate a run registration; return it normalised (absent optional fields filled in)."""
    obj = _mapping(obj, "body")
    _no_unknown(obj, "", _RUN_KEYS)
    _check_protocol(obj)
    run: dict[str, Any] = {"protocol": PROTOCOL_VERSION}
    for key in ("name", "team", "framework"):
        run[key] = None if obj.get(key) is None else _name(obj[key], key, limits)
    policy = obj.get("dtype_policy")
    run["dtype_policy"] = "float32" if policy is None else _choice(policy, "dtype_policy", DTYPE_POLICIES)
    run["halt_on"] = _choice(obj.get("halt_on", HaltPolicy.CRITICAL), "halt_on", HALT_POLICIES)
    run["stable_loss"] = _bool(obj.get("stable_loss", False), "stable_loss")
    layers = _list(obj.get("layers", []), "layers", limits.layers, "layers")
    run["layers"] = [_decode_layer(v, f"layers[{i}]", limits) for i, v in enumerate(layers)]
    meta = _mapping(obj.get("meta", {}), "meta")
    run["meta"] = {
        _name(k, "meta", limits): _str(v, f"meta.{k}", limits.text_chars, limit="text_chars") for k, v in meta.items()
    }
    return run


def _name(value: Any, field: str, limits: Limits) -> str:
    return _str(value, field, limits.name_chars, limit="name_chars")


def _decode_layer(obj: Any, field: str, limits: Limits) -> dict[str, Any]:
    obj = _mapping(obj, field)
    _no_unknown(obj, field, _LAYER_KEYS)
    if "name" not in obj:
        raise ProtocolError(f"{field}.name", "required")
    activation, kind = obj.get("activation"), obj.get("kind")
    row = {
        "name": _name(obj["name"], f"{field}.name", limits),
        "kind": "Layer" if kind is None or kind == "" else _name(kind, f"{field}.kind", limits),
        "activation": None if activation is None else _name(activation, f"{field}.activation", limits),
        "params": _int(obj.get("params", 0), f"{field}.params", minimum=0),
    }
    if obj.get("dtype") is not None:  # kept only when sent: tables from older clients stay as they were
        row["dtype"] = _choice(obj["dtype"], f"{field}.dtype", LAYER_DTYPES)
    return row


def decode_batch(obj: Any, n_layers: int | None = None, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Validate a step batch of either protocol; return it as protocol 1 spells it, its records as maps
    (what tools and test stand-ins read). ``n_layers`` (the run's layer table length) checks the layer arrays.
    The service itself reads batches as columns, with :func:`decode_steps`."""
    obj = _mapping(obj, "body")
    if _check_protocol(obj) == 2:
        columnar = decode_steps(obj, n_layers, limits)
        return {
            "protocol": 2,
            "attempt": columnar.attempt,
            "records": columnar.columns.records(),
            "acks": columnar.acks,
            "dropped": columnar.dropped,
            "final": columnar.final,
            "events": columnar.events,
        }
    _no_unknown(obj, "", _BATCH_KEYS)
    records = _list(obj.get("records", []), "records", limits.records, "records")
    acks = _list(obj.get("acks", []), "acks", 1000)
    events = _list(obj.get("events", []), "events", 1000)
    return {
        "protocol": 1,
        "attempt": _str(obj.get("attempt", "0"), "attempt", 64, ATTEMPT_PATTERN),
        "records": [decode_record(r, f"records[{i}]", n_layers) for i, r in enumerate(records)],
        "acks": [_decode_ack(a, f"acks[{i}]") for i, a in enumerate(acks)],
        "dropped": _int(obj.get("dropped", 0), "dropped", minimum=0),
        "final": _bool(obj.get("final", False), "final"),
        "events": [_decode_client_event(e, f"events[{i}]") for i, e in enumerate(events)],
    }


def _decode_client_event(obj: Any, field: str) -> dict[str, Any]:
    """An event the job reports: ``step``, ``kind`` (``recovery``), ``message`` and flat ``details``
    (numbers or strings; the strings "NaN", "Infinity" and "-Infinity" are the floats, as JSON spells them)."""
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
    if isinstance(value, str) and value not in _NONFINITE_TO_JSON:  # "NaN" in JSON is the float
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


_COLUMNAR_KEYS: Final = frozenset(
    {
        "protocol",
        "attempt",
        "steps",
        "scalars",
        "scalar_values",
        "layer_stats",
        "n_layers",
        "layer_values",
        "present",
        "dtype",
        "acks",
        "dropped",
        "final",
        "events",
    }
)
FLOAT_DTYPE: Final = "<f8"
"""The one dtype protocol 2 packs its values in: little-endian IEEE float64."""


@dataclass(frozen=True, eq=False)
class StepBatch:
    """A validated ``POST .../steps`` body, whichever protocol carried it: its records as columns."""

    protocol: int
    attempt: str
    columns: StepColumns
    acks: list[dict[str, Any]]
    dropped: int
    final: bool
    events: list[dict[str, Any]]
    """Events the job reports itself (a recovery: what it rolled back to)."""


def decode_steps(obj: Any, n_layers: int | None = None, limits: Limits = DEFAULT_LIMITS) -> StepBatch:
    """Validate a step batch of protocol 1 or 2; ``n_layers`` (the run's layer table length) checks the
    per-layer arrays. Raises ProtocolError naming the offending field."""
    obj = _mapping(obj, "body")
    if _check_protocol(obj) == 1:
        batch = decode_batch(obj, n_layers, limits)
        columns = StepColumns.from_records(batch["records"], n_layers)
        return StepBatch(1, batch["attempt"], columns, batch["acks"], batch["dropped"], batch["final"], batch["events"])
    _no_unknown(obj, "", _COLUMNAR_KEYS)
    acks = _list(obj.get("acks", []), "acks", 1000)
    events = _list(obj.get("events", []), "events", 1000)
    return StepBatch(
        protocol=2,
        attempt=_str(obj.get("attempt", "0"), "attempt", 64, ATTEMPT_PATTERN),
        columns=_decode_columns(obj, n_layers, limits.records),
        acks=[_decode_ack(a, f"acks[{i}]") for i, a in enumerate(acks)],
        dropped=_int(obj.get("dropped", 0), "dropped", minimum=0),
        final=_bool(obj.get("final", False), "final"),
        events=[_decode_client_event(e, f"events[{i}]") for i, e in enumerate(events)],
    )


def _decode_columns(obj: Mapping[str, Any], n_layers: int | None, max_records: int) -> StepColumns:
    if obj.get("dtype", FLOAT_DTYPE) != FLOAT_DTYPE:
        raise ProtocolError(
            "dtype", f"values travel as {FLOAT_DTYPE!r} (little-endian float64), got {_show(obj['dtype'])}"
        )
    steps = _steps(obj.get("steps", b""), max_records)
    n = len(steps)
    scalar_names = _names(obj.get("scalars", []), "scalars", SCALAR_COLUMNS)
    scalars = _packed(obj.get("scalar_values", b""), "scalar_values", (n, len(scalar_names)), "steps × scalars")
    layer_names = _names(obj.get("layer_stats", []), "layer_stats", LAYER_FIELDS)
    width = _n_layers(obj.get("n_layers"), n_layers, bool(layer_names))
    layers = _packed(
        obj.get("layer_values", b""), "layer_values", (n, width, len(layer_names)), "steps × layers × statistics"
    )
    present = _present(obj.get("present"), n, len(scalar_names) + len(layer_names))
    columns = StepColumns(steps, scalar_names, scalars, layer_names, layers, present)
    _check_skipped(columns)
    return columns if present is None else _absent_as_nan(columns, present)


def _bin(value: Any, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError(field, f"expected packed bytes (msgpack bin), got {_show(value)}")
    return value


def _steps(value: Any, max_records: int) -> npt.NDArray[np.int64]:
    data = _bin(value, "steps")
    if len(data) % 8:
        raise ProtocolError("steps", f"expected little-endian int64, 8 bytes a step; got {len(data)} bytes")
    if len(data) // 8 > max_records:
        raise ProtocolError("steps", f"more than {max_records} steps; send fewer records per request", "records")
    steps = np.frombuffer(data, dtype="<i8").astype(np.int64)
    if len(steps) and (steps.min() < 0 or steps.max() > 2**62):
        raise ProtocolError("steps", "every step must be in 0 .. 2**62")
    return steps


def _names(value: Any, field: str, known: tuple[str, ...]) -> tuple[str, ...]:
    names = _list(value, field, len(known))
    for i, name in enumerate(names):
        if name not in known:
            raise ProtocolError(f"{field}[{i}]", f"unknown name {_show(name)}; expected one of {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ProtocolError(field, "a name is listed twice")
    return tuple(names)


def _n_layers(value: Any, expected: int | None, needed: bool) -> int:
    """The layer count of the batch's statistics: the run's table length when the batch carries none."""
    if not needed:
        return expected or 0
    if value is None:
        raise ProtocolError("n_layers", "required with layer_stats")
    width = _int(value, "n_layers", minimum=0)
    if expected is not None and width != expected:
        raise ProtocolError("n_layers", f"the run's layer table has {expected} layers, the batch {width}")
    return width


def _packed(value: Any, field: str, shape: tuple[int, ...], layout: str) -> npt.NDArray[np.float64]:
    data = _bin(value, field)
    expected = 8 * math.prod(shape)
    if len(data) != expected:
        dims = " × ".join(map(str, shape))
        raise ProtocolError(
            field, f"expected {expected} bytes ({layout} = {dims} little-endian float64), got {len(data)}"
        )
    return np.frombuffer(data, dtype=FLOAT_DTYPE).reshape(shape)


def _present(value: Any, n: int, width: int) -> npt.NDArray[np.bool_] | None:
    if value is None:
        return None
    data = _bin(value, "present")
    if len(data) != n * width:
        raise ProtocolError("present", f"expected {n * width} bytes (steps × names, one byte each), got {len(data)}")
    flags = np.frombuffer(data, dtype=np.uint8).reshape(n, width)
    if (flags > 1).any():
        raise ProtocolError("present", "each byte must be 0 (absent) or 1 (present)")
    return None if flags.all() else flags.astype(bool)


def _check_skipped(columns: StepColumns) -> None:
    values, present = columns.scalar("skipped")
    if ((values != 0.0) & (values != 1.0) & present).any():
        raise ProtocolError("scalar_values", "skipped must be 0.0 or 1.0")


def _absent_as_nan(columns: StepColumns, present: npt.NDArray[np.bool_]) -> StepColumns:
    """The arrays with NaN where a value is absent (what a sender wrote there is not data)."""
    k = len(columns.scalar_names)
    scalars = np.where(present[:, :k], columns.scalars, np.nan)
    layers = np.where(present[:, None, k:], columns.layers, np.nan)
    return StepColumns(columns.steps, columns.scalar_names, scalars, columns.layer_names, layers, present)


def encode_batch(
    records: Sequence[Mapping[str, Any]] | StepColumns,
    *,
    attempt: str,
    acks: Sequence[Mapping[str, Any]] = (),
    dropped: int = 0,
    final: bool = False,
    content_type: str = MSGPACK,
    n_layers: int | None = None,
    events: Sequence[Mapping[str, Any]] = (),
) -> tuple[bytes, str]:
    """The body of ``POST /v1/runs/{run_id}/steps`` and its Content-Type: protocol 2 (columns) in msgpack,
    protocol 1 (records as maps) in JSON. ``records`` are ``log_step``-style maps (per-layer values as
    lists or arrays) or columns; ``n_layers`` is the run's layer table length (default: the first layer
    array's). The one place a request body of step records is built."""
    columns = records if isinstance(records, StepColumns) else StepColumns.from_records(records, n_layers)
    batch = {"attempt": attempt, "acks": list(acks), "dropped": dropped, "final": final}
    if events:  # only when there are some: a service older than events refuses the key
        batch["events"] = list(events)
    if content_type == JSON:
        return dumps({"protocol": 1, **batch, "records": columns.records()}, JSON), JSON
    if content_type != MSGPACK:
        raise ProtocolError("content-type", f"unsupported {content_type!r}; use {MSGPACK} or {JSON}")
    return dumps({"protocol": 2, **batch, **columns_to_wire(columns)}, MSGPACK), MSGPACK


def columns_to_wire(columns: StepColumns, *, layers: bool = True) -> dict[str, Any]:
    """The protocol-2 fields that carry ``columns`` (packed little-endian arrays and their names);
    ``layers=False`` leaves out ``layer_values`` (a store keeps that array apart)."""
    wire: dict[str, Any] = {
        "steps": columns.steps.astype("<i8").tobytes(),
        "scalars": list(columns.scalar_names),
        "scalar_values": np.ascontiguousarray(columns.scalars, dtype=FLOAT_DTYPE).tobytes(),
        "layer_stats": list(columns.layer_names),
        "n_layers": columns.n_layers,
    }
    if layers:
        wire["layer_values"] = np.ascontiguousarray(columns.layers, dtype=FLOAT_DTYPE).tobytes()
    if columns.present is not None:
        wire["present"] = columns.present.astype(np.uint8).tobytes()
    return wire


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
