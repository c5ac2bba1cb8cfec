"""Records go in and come back bit for bit, non-finite values and all (msgpack and JSON)."""

from __future__ import annotations

import json
import math
from typing import Any

from nanwatch import protocol
from tests.conftest import Service
from tests.floats import bits
from tests.service.helpers import healthy_layers, post_steps, register, reply

SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 2.2250738585072014e-308 / 3, 1.7976931348623157e308]


def _special_record(step: int) -> dict[str, Any]:
    layers = healthy_layers()
    for i, name in enumerate(protocol.LAYER_FIELDS):
        layers[name] = [SPECIAL[(step + i + j) % len(SPECIAL)] for j in range(3)]
    return {
        "step": step,
        "wall_time": 1_700_000_000.0 + step / 7,
        "loss": SPECIAL[step % len(SPECIAL)],
        "grad_norm": SPECIAL[(step + 1) % len(SPECIAL)],
        "lr": 1e-3,
        "loss_scale": 32768.0,
        "skipped": step % 3 == 0,
        "layers": layers,
    }


def _no_bare_tokens(token: str) -> float:
    raise AssertionError(f"bare {token} in the JSON reply")


def _read_all(service: Service, run_id: str, accept: str) -> list[dict[str, Any]]:
    response = service.client.get(f"/v1/runs/{run_id}/steps", params={"limit": 10_000}, headers={"Accept": accept})
    return list(reply(response)["steps"])


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("seq", "attempt", "received_at")}


def test_thousand_msgpack_records_read_back_bit_for_bit(service: Service) -> None:
    register(service.client, "rt-msgpack", halt_on="never")
    sent = [_special_record(step) for step in range(1000)]
    for start in range(0, 1000, 250):
        assert reply(post_steps(service.client, "rt-msgpack", sent[start : start + 250]))["accepted"] == 250
    got = [_strip(row) for row in _read_all(service, "rt-msgpack", protocol.MSGPACK)]
    assert bits(got) == bits(sent)


def test_thousand_json_records_carry_nonfinite_as_strings_both_ways(service: Service) -> None:
    register(service.client, "rt-json", halt_on="never")
    sent = [_special_record(step) for step in range(1000)]
    for start in range(0, 1000, 250):
        response = post_steps(service.client, "rt-json", sent[start : start + 250], content_type=protocol.JSON)
        assert response.status_code == 200, response.text
    raw = service.client.get("/v1/runs/rt-json/steps", params={"limit": 10_000}, headers={"Accept": "application/json"})
    rows = [_strip(row) for row in json.loads(raw.content, parse_constant=_no_bare_tokens)["steps"]]
    assert rows == [protocol.json_safe(r) for r in sent]  # strings "NaN"/"Infinity"/"-Infinity" on the way out
    assert bits([protocol.decode_record(r) for r in rows]) == bits(sent)  # and back to the same floats
