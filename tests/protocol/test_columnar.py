"""Protocol 2: batches as packed columns, bit-exact both ways; every inconsistency refused by name."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanwatch import protocol
from nanwatch.columns import StepColumns
from tests.floats import bits

from .test_protocol import N_LAYERS, records


@settings(max_examples=150, deadline=None)
@given(st.lists(records(), max_size=6))
def test_columnar_batches_round_trip_every_float_bit_for_bit(batch: list[dict[str, Any]]) -> None:
    body, content_type = protocol.encode_batch(batch, attempt="a-1", n_layers=N_LAYERS)
    assert content_type == protocol.MSGPACK
    decoded = protocol.decode_steps(protocol.loads(body, content_type), N_LAYERS)
    assert decoded.protocol == 2 and decoded.attempt == "a-1"
    assert bits(decoded.columns.records()) == bits(batch)


@settings(max_examples=50, deadline=None)
@given(st.lists(records(), max_size=6))
def test_the_json_body_is_protocol_1_and_decodes_to_the_same_records(batch: list[dict[str, Any]]) -> None:
    body, content_type = protocol.encode_batch(batch, attempt="a-1", content_type=protocol.JSON, n_layers=N_LAYERS)
    message = protocol.loads(body, content_type)
    assert message["protocol"] == 1
    decoded = protocol.decode_steps(message, N_LAYERS)
    assert bits(decoded.columns.records(), canonical_nan=True) == bits(batch, canonical_nan=True)


def test_nan_payloads_signs_and_infinities_survive_exactly() -> None:
    odd = [math.nan, -math.nan, math.inf, -math.inf, -0.0, 5e-324]
    payload_nan = np.frombuffer(np.array([0x7FF8_0000_DEAD_BEEF], dtype="<u8").tobytes(), "<f8")[0].item()
    values = [*odd, payload_nan, 1.0]
    batch = [{"step": i, "loss": v, "layers": {"act_max_abs": [v, -v]}} for i, v in enumerate(values)]
    body, _ = protocol.encode_batch(batch, attempt="x")
    columns = protocol.decode_steps(protocol.loads(body), 2).columns
    assert columns.scalar("loss")[0].tobytes() == np.array(values, dtype="<f8").tobytes()
    assert bits(columns.records()) == bits(batch)


def test_records_that_carry_different_fields_keep_what_each_carried() -> None:
    light = {"step": 0, "loss": 1.0, "layers": {"grad_norm": [1.0, 2.0]}}
    detail = {"step": 1, "loss": math.nan, "skipped": True, "layers": {"grad_norm": [3.0, 4.0], "act_std": [0.5, 0.0]}}
    body, _ = protocol.encode_batch([light, detail], attempt="x")
    columns = protocol.decode_steps(protocol.loads(body), 2).columns
    assert bits(columns.records()) == bits([light, detail])
    std, present = columns.layer("act_std")
    assert present.tolist() == [False, True] and np.isnan(std[0]).all()
    skipped, carried = columns.scalar("skipped")
    assert carried.tolist() == [False, True] and skipped[1] == 1.0


def test_protocol_1_bodies_are_still_accepted() -> None:
    batch = {"protocol": 1, "attempt": "old", "records": [{"step": 3, "loss": 0.5, "layers": {"act_std": [1, 2]}}]}
    decoded = protocol.decode_steps(protocol.loads(protocol.dumps(batch)), 2)
    assert decoded.protocol == 1
    assert decoded.columns.records() == [{"step": 3, "loss": 0.5, "layers": {"act_std": [1.0, 2.0]}}]


def _body(**changes: Any) -> dict[str, Any]:
    records = [{"step": s, "loss": 0.5, "grad_norm": 1.0, "layers": {"grad_norm": [1.0, 2.0, 3.0]}} for s in range(4)]
    body, _ = protocol.encode_batch(records, attempt="x")
    message: dict[str, Any] = msgpack.unpackb(body)
    message.update(changes)
    return {k: v for k, v in message.items() if v is not None}


FLOAT32_VALUES = np.ones(8, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"protocol": 3}, "protocol", "1 and 2"),
        ({"scalar_values": b"\0" * 56}, "scalar_values", "64 bytes"),
        ({"scalar_values": FLOAT32_VALUES, "dtype": "<f4"}, "dtype", "<f8"),
        ({"scalar_values": FLOAT32_VALUES}, "scalar_values", "float64"),
        ({"scalar_values": [0.5] * 8}, "scalar_values", "packed bytes"),
        ({"n_layers": 4}, "n_layers", "3 layers"),
        ({"layer_values": b"\0" * 88}, "layer_values", "96 bytes"),
        ({"steps": b"\0" * 31}, "steps", "8 bytes a step"),
        ({"steps": np.array([0, 1, -2, 3], dtype="<i8").tobytes()}, "steps", "0 .. 2**62"),
        ({"scalars": ["loss", "gradnorm"]}, "scalars[1]", "unknown name"),
        ({"scalars": ["loss", "loss"]}, "scalars", "twice"),
        ({"layer_stats": ["act_frac"]}, "layer_stats[0]", "unknown name"),
        ({"present": b"\1" * 11}, "present", "12 bytes"),
        ({"present": b"\2" * 12}, "present", "0 (absent) or 1"),
        ({"records": []}, "records", "unknown field"),
    ],
)
def test_an_inconsistent_columnar_batch_is_refused_naming_what_is_wrong(
    changes: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode_steps(_body(**changes), 3)
    assert caught.value.field == field and words in caught.value.message


def test_a_skipped_flag_that_is_not_0_or_1_is_refused() -> None:
    body, _ = protocol.encode_batch([{"step": 0, "skipped": True}], attempt="x")
    message = msgpack.unpackb(body)
    message["scalar_values"] = np.array([0.5]).tobytes()
    with pytest.raises(protocol.ProtocolError, match="skipped"):
        protocol.decode_steps(message, 0)


def test_columns_concatenate_over_the_union_of_their_names_and_a_changed_layer_table() -> None:
    first = StepColumns.from_records([{"step": 0, "loss": 1.0, "layers": {"grad_norm": [1.0, 2.0]}}])
    second = StepColumns.from_records([{"step": 1, "lr": 0.1, "layers": {"act_std": [0.5, 0.5]}}])
    other_table = StepColumns.from_records([{"step": 2, "loss": 3.0, "layers": {"grad_norm": [9.0]}}])
    joined = StepColumns.concat([first, second, other_table], n_layers=2)
    assert joined.records() == [
        {"step": 0, "loss": 1.0, "layers": {"grad_norm": [1.0, 2.0]}},
        {"step": 1, "lr": 0.1, "layers": {"act_std": [0.5, 0.5]}},
        {"step": 2, "loss": 3.0},
    ]
