"""Bad input gets a clear 4xx naming the field, and nothing stored is touched."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
import pytest

from nanwatch import protocol
from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply


def _snapshot(service: Service, run_id: str) -> tuple[Any, Any, Any]:
    run = service.client.get(f"/v1/runs/{run_id}").json()
    run.pop("last_seen")
    steps = service.client.get(f"/v1/runs/{run_id}/steps").json()["steps"]
    events = service.client.get(f"/v1/runs/{run_id}/events").json()["events"]
    return run, steps, events


@pytest.fixture
def stored(service: Service) -> Service:
    register(service.client, "keep")
    reply(post_steps(service.client, "keep", [record(s) for s in range(3)]))
    return service


BAD_BATCHES = [
    ({"records": [{"loss": 1.0}]}, "records[0].step"),
    ({"records": [{"step": "three"}]}, "records[0].step"),
    ({"records": [{"step": -1}]}, "records[0].step"),
    ({"records": [{"step": 1, "loss": "high"}]}, "records[0].loss"),
    ({"records": [{"step": 1, "loss": None, "skipped": 1}]}, "records[0].skipped"),
    ({"records": [{"step": 1, "layers": {"act_std": [0.1, 0.2]}}]}, "records[0].layers.act_std"),
    ({"records": [{"step": 1, "layers": {"act_std": [0.1, "x", 0.3]}}]}, "records[0].layers.act_std[1]"),
    ({"records": [{"step": 1, "layers": {"act_typo": [0.1, 0.2, 0.3]}}]}, "records[0].layers.act_typo"),
    ({"records": [record(4), {"step": 5, "colour": "red"}]}, "records[1].colour"),
    ({"records": "many"}, "records"),
    ({"records": [], "dropped": -2}, "dropped"),
    ({"records": [], "acks": [{"id": "x"}]}, "acks[0].step"),
    ({"records": [], "protocol": 3}, "protocol"),
    ({"records": [], "attempt": "bad attempt!"}, "attempt"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BATCHES)
@pytest.mark.parametrize("content_type", [protocol.JSON, protocol.MSGPACK])
def test_malformed_batch_is_422_naming_the_field_and_stores_nothing(
    stored: Service, body: dict[str, Any], field: str, content_type: str
) -> None:
    before = _snapshot(stored, "keep")
    response = stored.client.post(
        "/v1/runs/keep/steps", content=protocol.dumps(body, content_type), headers={"Content-Type": content_type}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == field
    assert _snapshot(stored, "keep") == before


def _columnar(**changes: Any) -> bytes:
    """A valid protocol-2 body of 4 records over the 3-layer test table, with ``changes`` applied."""
    body, _ = protocol.encode_batch([record(s) for s in range(10, 14)], attempt="a1")
    message = msgpack.unpackb(body)
    message.update(changes)
    return msgpack.packb({k: v for k, v in message.items() if v is not None}, use_bin_type=True)


BAD_COLUMNS = [
    ({"scalar_values": b"\0" * 8}, "scalar_values"),  # wrong array length
    ({"layer_values": np.zeros((4, 3, 12), dtype="<f4").tobytes()}, "layer_values"),  # float32, not float64
    ({"dtype": "<f4"}, "dtype"),
    ({"n_layers": 2}, "n_layers"),  # the run has 3 layers
    ({"layer_values": np.zeros((4, 2, 12)).tobytes(), "n_layers": 2}, "n_layers"),
    ({"steps": np.arange(5, dtype="<i8").tobytes()}, "scalar_values"),  # 5 steps, values for 4
    ({"steps": b"\0" * 30}, "steps"),
    ({"present": b"\1" * 3}, "present"),
    ({"scalars": ["loss", "colour"]}, "scalars[1]"),
    ({"protocol": 3}, "protocol"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_COLUMNS)
def test_an_inconsistent_columnar_batch_is_422_naming_what_is_wrong_and_stores_nothing(
    stored: Service, changes: dict[str, Any], field: str
) -> None:
    before = _snapshot(stored, "keep")
    response = stored.client.post(
        "/v1/runs/keep/steps", content=_columnar(**changes), headers={"Content-Type": protocol.MSGPACK}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == field
    assert _snapshot(stored, "keep") == before


def test_a_truncated_columnar_body_is_422_and_stores_nothing(stored: Service) -> None:
    before = _snapshot(stored, "keep")
    body = _columnar()
    response = stored.client.post(
        "/v1/runs/keep/steps", content=body[: len(body) // 2], headers={"Content-Type": protocol.MSGPACK}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "body"
    assert _snapshot(stored, "keep") == before


def test_the_same_columnar_batch_is_stored_once_it_is_valid(stored: Service) -> None:
    headers = {"Content-Type": protocol.MSGPACK}
    assert reply(stored.client.post("/v1/runs/keep/steps", content=_columnar(), headers=headers))["accepted"] == 4
    steps = [row["step"] for row in stored.client.get("/v1/runs/keep/steps").json()["steps"]]
    assert steps == [0, 1, 2, 10, 11, 12, 13]


def test_body_over_the_size_limit_is_413_and_stores_nothing(tmp_path: Any) -> None:
    import httpx

    from nanwatch_service.settings import Settings
    from tests.conftest import ServiceThread

    settings = Settings(db=str(tmp_path / "x.db"), max_body_bytes=20_000)
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url) as client:
        register(client, "big")
        response = post_steps(client, "big", [record(s) for s in range(200)])
        assert response.status_code == 413
        assert client.get("/v1/runs/big/steps").json()["steps"] == []
        assert client.get("/v1/runs/big").json()["records"] == 0


@pytest.mark.parametrize(
    "body",
    [b'{"records": [{"step": 1, "loss": NaN}]}', b"{not json", b'{"records": [{"step": 1, "loss": Infinity}]}'],
)
def test_invalid_json_and_bare_nan_tokens_are_422(stored: Service, body: bytes) -> None:
    before = _snapshot(stored, "keep")
    response = stored.client.post("/v1/runs/keep/steps", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "body"
    assert _snapshot(stored, "keep") == before


def test_unsupported_content_type_is_415(stored: Service) -> None:
    response = stored.client.post("/v1/runs/keep/steps", content=b"step=1", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


@pytest.mark.parametrize("path", ["/v1/runs/ghost", "/v1/runs/ghost/steps", "/v1/runs/ghost/events"])
def test_reads_of_an_unknown_run_are_404(service: Service, path: str) -> None:
    response = service.client.get(path)
    assert response.status_code == 404
    assert "ghost" in response.json()["detail"]


def test_steps_and_halt_for_an_unknown_run_are_404(service: Service) -> None:
    assert post_steps(service.client, "ghost", [record(0)]).status_code == 404
    assert service.client.post("/v1/runs/ghost/halt", json={"reason": "x"}).status_code == 404


@pytest.mark.parametrize("run_id", ["has space", "semi;colon", "x" * 129, "ünïcode", "dollar$"])
def test_run_ids_outside_the_pattern_are_422(service: Service, run_id: str) -> None:
    response = service.client.put(f"/v1/runs/{run_id}", json={"layers": []})
    assert response.status_code == 422, response.text
    assert "run_id" in json.dumps(response.json())
    assert service.client.get("/v1/runs").json()["runs"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"halt_on": "sometimes"}, "halt_on"),
        ({"dtype_policy": "float8"}, "dtype_policy"),
        ({"layers": [{"kind": "Dense"}]}, "layers[0].name"),
        ({"layers": [{"name": "d", "params": -1}]}, "layers[0].params"),
        ({"layers": [{"name": "d", "dtype": "int8"}]}, "layers[0].dtype"),
        ({"team": 7}, "team"),
    ],
)
def test_bad_run_registration_is_422_and_leaves_the_run_as_it_was(stored: Service, body: Any, field: str) -> None:
    before = _snapshot(stored, "keep")
    response = stored.client.put("/v1/runs/keep", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == field
    assert _snapshot(stored, "keep") == before


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": 3}, {"reason": "x", "extra": 1}])
def test_halt_without_a_reason_is_422_and_queues_nothing(stored: Service, body: Any) -> None:
    response = stored.client.post("/v1/runs/keep/halt", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "reason"
    assert reply(post_steps(stored.client, "keep", [record(3)]))["commands"] == []


@pytest.mark.parametrize("params", [{"limit": 0}, {"every": 0}, {"fields": "loss,colour"}, {"start": -1}])
def test_bad_history_queries_are_422(stored: Service, params: dict[str, Any]) -> None:
    assert stored.client.get("/v1/runs/keep/steps", params=params).status_code == 422
