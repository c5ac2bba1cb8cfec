"""Property tests: every valid message survives both encodings; bad ones name their field."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanwatch import protocol
from tests.floats import bits

floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)
N_LAYERS = 4


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {"step": draw(st.integers(0, 2**40))}
    for name in protocol.SCALAR_FIELDS:
        if draw(st.booleans()):
            record[name] = draw(floats)
    if draw(st.booleans()):
        record["skipped"] = draw(st.booleans())
    names = draw(st.sets(st.sampled_from(protocol.LAYER_FIELDS)))
    if names:
        record["layers"] = {n: draw(st.lists(floats, min_size=N_LAYERS, max_size=N_LAYERS)) for n in sorted(names)}
    return record


@st.composite
def batches(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "protocol": 1,
        "attempt": draw(st.from_regex(protocol.ATTEMPT_PATTERN, fullmatch=True)),
        "records": draw(st.lists(records(), max_size=5)),
        "acks": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"id": st.text("abc0123", min_size=1, max_size=8), "step": st.integers(0, 10**6)}
                ),
                max_size=2,
            )
        ),
        "dropped": draw(st.integers(0, 10**9)),
        "final": draw(st.booleans()),
        "events": draw(st.lists(client_events(), max_size=2)),
    }


def client_events() -> st.SearchStrategy[dict[str, Any]]:
    """Events the job reports (a recovery), details of numbers and strings (a detail "NaN", "Infinity" or
    "-Infinity" is the float, in either encoding, as JSON spells it)."""
    spelled = st.text(max_size=8).filter(lambda text: text not in ("NaN", "Infinity", "-Infinity"))
    detail = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True), spelled)
    return st.fixed_dictionaries(
        {
            "step": st.integers(0, 10**6),
            "kind": st.from_regex(protocol.EVENT_KIND_PATTERN, fullmatch=True),
            "message": st.text(max_size=20),
            "details": st.dictionaries(st.text(min_size=1, max_size=8), detail, max_size=4),
        }
    )


@settings(max_examples=100, deadline=None)
@given(batches())
def test_msgpack_round_trip_is_bit_exact(batch: dict[str, Any]) -> None:
    body = protocol.dumps(batch, protocol.MSGPACK)
    assert bits(protocol.decode_batch(protocol.loads(body, protocol.MSGPACK), N_LAYERS)) == bits(batch)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_json_round_trip_keeps_every_float_including_nonfinite(batch: dict[str, Any]) -> None:
    body = protocol.dumps(batch, protocol.JSON)
    plain = json.loads(body, parse_constant=_refuse)  # no bare NaN/Infinity token
    assert None not in _leaves(plain)  # and no null standing for a float
    decoded = protocol.decode_batch(protocol.loads(body, protocol.JSON), N_LAYERS)
    assert bits(decoded, canonical_nan=True) == bits(batch, canonical_nan=True)


def _refuse(token: str) -> None:
    raise AssertionError(f"bare {token} in JSON")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@pytest.mark.parametrize(("value", "text"), [(math.nan, '"NaN"'), (math.inf, '"Infinity"'), (-math.inf, '"-Infinity"')])
def test_json_spells_nonfinite_floats_as_strings(value: float, text: str) -> None:
    assert protocol.dumps({"loss": value}, protocol.JSON) == f'{{"loss":{text}}}'.encode()


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["name", "team", "framework"]), st.text(max_size=20)),
    st.sampled_from(protocol.HALT_POLICIES),
    st.sampled_from(protocol.DTYPE_POLICIES),
    st.booleans(),
)
def test_run_registration_round_trips(fields: dict[str, str], halt_on: str, dtype: str, stable_loss: bool) -> None:
    run = {
        **fields,
        "halt_on": halt_on,
        "dtype_policy": dtype,
        "stable_loss": stable_loss,
        "layers": [{"name": "d", "kind": "Dense", "activation": "relu", "params": 10}],
    }
    for content_type in (protocol.MSGPACK, protocol.JSON):
        decoded = protocol.decode_run(protocol.loads(protocol.dumps(run, content_type), content_type))
        assert {k: decoded[k] for k in run} == run


def test_a_layer_dtype_is_kept_when_sent_and_refused_by_name_when_not_a_float_dtype() -> None:
    layers = [{"name": "a", "dtype": "float16"}, {"name": "b"}]
    decoded = protocol.decode_run({"name": "r", "layers": layers})["layers"]
    assert decoded[0]["dtype"] == "float16" and "dtype" not in decoded[1]  # absent stays absent
    for bad in ("int8", 16, ""):
        with pytest.raises(protocol.ProtocolError) as caught:
            protocol.decode_run({"name": "r", "layers": [{"name": "a"}, {"name": "b", "dtype": bad}]})
        assert caught.value.field == "layers[1].dtype"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_registration_flag_that_is_not_a_boolean_is_refused_by_name(value: Any) -> None:
    assert protocol.decode_run({"name": "r"})["stable_loss"] is False  # absent: not stable
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode_run({"name": "r", "stable_loss": value})
    assert caught.value.field == "stable_loss"


def test_a_command_in_a_reply_decodes_and_ignores_fields_it_does_not_know() -> None:
    reply = {
        "accepted": 2,
        "commands": [
            {
                "id": "c1",
                "action": "halt",
                "reason": "r",
                "source": "operator",
                "step": 3,
                "at_step": 4,
                "created_at": 1.0,
            }
        ],
    }
    assert protocol.decode_reply(reply)["commands"][0]["at_step"] == 4


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"records": [{"step": True}]}, "records[0].step"),
        ({"records": [{"step": 1, "lr": [1.0]}]}, "records[0].lr"),
        ({"records": [{"step": 1, "layers": {"grad_norm": [1.0, 2.0, 3.0, "Inf"]}}]}, "records[0].layers.grad_norm[3]"),
        ({"records": [{"step": 1, "layers": []}]}, "records[0].layers"),
        ({"final": "yes"}, "final"),
        ([], "body"),
    ],
)
def test_decode_names_the_offending_field(message: Any, field: str) -> None:
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode_batch(message, N_LAYERS)
    assert caught.value.field == field


def test_bare_nan_token_in_json_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="bare NaN"):
        protocol.loads(b'{"loss": NaN}', protocol.JSON)
