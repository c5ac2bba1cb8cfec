"""Limits and hardening: each configured limit answers 413/422 naming itself and its setting and stores
nothing; input that used to crash the service (a deep body, a lone surrogate, huge integers) is a 4xx;
every response carries the security headers; a 405 lists every method of its path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanwatch import protocol
from nanwatch_service.settings import Settings
from tests.conftest import Service, ServiceThread
from tests.service.helpers import LAYERS, post_steps, record, register, reply

SMALL = Settings(
    max_body_bytes=50_000,
    max_records=4,
    max_layers=3,
    max_name_chars=16,
    max_text_chars=40,
    max_runs_per_team=2,
)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[httpx.Client]:
    """A service with small limits, one run ``kept`` (team vision) holding two steps."""
    settings = Settings(**{**SMALL.__dict__, "db": str(tmp_path / "nanwatch.db")})
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        register(client, "kept")
        reply(post_steps(client, "kept", [record(0), record(1)]))
        yield client


def _refusal(response: httpx.Response, status: int, setting: str, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    [detail] = response.json()["detail"]
    assert detail["type"] == "limit_exceeded" and detail["setting"] == setting
    assert detail["field"] == field and setting in detail["msg"]
    assert detail["limit"] == getattr(SMALL, setting.removeprefix("NANWATCH_").lower())
    return dict(detail)


def _unchanged(client: httpx.Client) -> None:
    run = client.get("/v1/runs/kept").json()
    assert (run["records"], run["name"], len(run["layers"])) == (2, "kept", 3)
    assert [r["run_id"] for r in client.get("/v1/runs").json()["runs"]] == ["kept"]


def test_a_body_over_max_body_bytes_is_413(small: httpx.Client) -> None:
    body = {"protocol": 1, "attempt": "a1", "records": [record(2)], "padding": "x" * 60_000}
    response = small.post("/v1/runs/kept/steps", json=body)
    _refusal(response, 413, "NANWATCH_MAX_BODY_BYTES", "")
    _unchanged(small)


@pytest.mark.parametrize("content_type", [protocol.JSON, protocol.MSGPACK])
def test_more_records_than_max_records_is_413(small: httpx.Client, content_type: str) -> None:
    records = [record(s) for s in range(10, 15)]
    if content_type == protocol.MSGPACK:  # protocol 2, as the client sends it
        body, _ = protocol.encode_batch(records, attempt="a1")
        response = small.post("/v1/runs/kept/steps", content=body, headers={"Content-Type": protocol.MSGPACK})
        _refusal(response, 413, "NANWATCH_MAX_RECORDS", "steps")
    else:
        _refusal(post_steps(small, "kept", records, content_type=content_type), 413, "NANWATCH_MAX_RECORDS", "records")
    _unchanged(small)


@pytest.mark.parametrize(
    ("body", "setting", "field"),
    [
        ({"layers": [*LAYERS, {"name": "fourth"}]}, "NANWATCH_MAX_LAYERS", "layers"),
        ({"name": "n" * 17}, "NANWATCH_MAX_NAME_CHARS", "name"),
        ({"team": "t" * 17}, "NANWATCH_MAX_NAME_CHARS", "team"),
        ({"layers": [{"name": "d" * 17}]}, "NANWATCH_MAX_NAME_CHARS", "layers[0].name"),
        ({"meta": {"k" * 17: "v"}}, "NANWATCH_MAX_NAME_CHARS", "meta"),
        ({"meta": {"note": "v" * 41}}, "NANWATCH_MAX_TEXT_CHARS", "meta.note"),
    ],
)
def test_a_registration_over_a_limit_is_422_naming_its_setting(
    small: httpx.Client, body: dict[str, Any], setting: str, field: str
) -> None:
    _refusal(small.put("/v1/runs/kept", json={"layers": LAYERS, **body}), 422, setting, field)
    _unchanged(small)


def test_a_halt_reason_over_max_text_chars_is_422(small: httpx.Client) -> None:
    _refusal(small.post("/v1/runs/kept/halt", json={"reason": "r" * 41}), 422, "NANWATCH_MAX_TEXT_CHARS", "reason")
    assert small.post("/v1/runs/kept/halt", json={"reason": "r" * 40}).status_code == 202


def test_an_alert_annotation_over_max_text_chars_is_422(small: httpx.Client) -> None:
    alert = {"status": "firing", "labels": {"run_id": "kept"}, "fingerprint": "f", "startsAt": "t"}
    body = {"version": "4", "alerts": [{**alert, "annotations": {"summary": "s" * 41}}]}
    response = small.post("/v1/alertmanager", json=body)
    _refusal(response, 422, "NANWATCH_MAX_TEXT_CHARS", "alerts[0].annotations.summary")


def test_a_team_at_max_runs_per_team_registers_no_new_run(small: httpx.Client) -> None:
    register(small, "second")  # team vision, as "kept"
    response = small.put("/v1/runs/third", json={"team": "vision", "layers": LAYERS})
    _refusal(response, 422, "NANWATCH_MAX_RUNS_PER_TEAM", "team")
    assert small.get("/v1/runs/third").status_code == 404
    assert small.put("/v1/runs/kept", json={"team": "vision", "layers": LAYERS}).status_code == 200  # an update
    assert small.put("/v1/runs/third", json={"team": "nlp", "layers": LAYERS}).status_code == 201  # another team


def test_limits_beyond_the_protocols_own_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"NANWATCH_MAX_RECORDS must be in 1\.\.10000"):
        Settings(max_records=20_000)
    with pytest.raises(ValueError, match="NANWATCH_MAX_NAME_CHARS"):
        Settings.from_env({"NANWATCH_MAX_NAME_CHARS": "0"})


def test_the_openapi_document_states_the_configured_limits(small: httpx.Client) -> None:
    document = small.get("/openapi.json").json()
    run = document["paths"]["/v1/runs/{run_id}"]["put"]["requestBody"]["content"][protocol.JSON]["schema"]
    assert run["properties"]["name"]["maxLength"] == 16 and run["properties"]["layers"]["maxItems"] == 3
    batch = document["paths"]["/v1/runs/{run_id}/steps"]["post"]["requestBody"]["content"][protocol.JSON]["schema"]
    assert batch["properties"]["records"]["maxItems"] == 4
    assert "x-limit" not in small.get("/openapi.json").text
    assert "securitySchemes" not in document.get("components", {})  # no tokens configured


def test_a_deeply_nested_body_is_422_not_a_crash(service: Service) -> None:
    register(service.client, "deep")
    for depth in (10_000, 200_000):
        body = b'{"records": ' + b"[" * depth + b"]" * depth + b"}"
        for path in ("/v1/runs/deep/steps", "/v1/runs/deep", "/v1/alertmanager", "/v1/runs/deep/halt"):
            method = "PUT" if path == "/v1/runs/deep" else "POST"
            response = service.client.request(method, path, content=body, headers={"Content-Type": protocol.JSON})
            assert response.status_code == 422, (path, response.text[:200])
    assert service.client.get("/healthz").status_code == 200


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\udc00y"])
def test_a_lone_surrogate_is_422_naming_the_field(service: Service, escape: str) -> None:
    cases = [
        ("PUT", "/v1/runs/sur", '{"name": "%s"}', "body.name"),
        ("PUT", "/v1/runs/sur", '{"meta": {"%s": "v"}}', "body.meta"),
        ("POST", "/v1/runs/sur/halt", '{"reason": "%s"}', "body.reason"),
        ("POST", "/v1/runs/sur/steps", '{"records": [], "acks": [{"id": "%s", "step": 1}]}', "body.acks[0].id"),
    ]
    register(service.client, "sur")
    for method, path, template, field in cases:
        body = (template % escape).encode()
        response = service.client.request(method, path, content=body, headers={"Content-Type": protocol.JSON})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["detail"][0]["field"] == field
    paired = service.client.put("/v1/runs/sur", content=b'{"name": "\\ud83d\\ude00"}')
    assert paired.status_code == 200 and paired.json()["name"] == "\N{GRINNING FACE}"


@pytest.mark.parametrize(
    "query",
    [
        "/v1/runs?offset=99999999999999999999999",
        "/v1/runs/r/events?after_id=99999999999999999999999",
        "/v1/runs/r/steps?end=99999999999999999999999",
        "/v1/runs/r/steps?start=4611686018427387905",
        "/v1/runs/r/steps?after_seq=99999999999999999999999",
    ],
)
def test_integers_past_2_to_the_62_are_422(service: Service, query: str) -> None:
    register(service.client, "r")
    response = service.client.get(query)
    assert response.status_code == 422 and "type" in response.json()["detail"][0], response.text


def test_a_huge_integer_loss_reads_as_infinity(service: Service) -> None:
    register(service.client, "huge")
    body = b'{"records": [{"step": 0, "loss": ' + b"9" * 400 + b"}]}"
    response = service.client.post("/v1/runs/huge/steps", content=body, headers={"Content-Type": protocol.JSON})
    assert response.status_code == 200, response.text
    [row] = service.client.get("/v1/runs/huge/steps", params={"fields": "loss"}).json()["steps"]
    assert row["loss"] == "Infinity"


def test_every_422_has_the_documented_shape(service: Service) -> None:
    register(service.client, "shape")
    for response in (
        service.client.get("/v1/runs/shape/steps", params={"fields": "loss,colour"}),
        service.client.put("/v1/runs/shape", json={"halt_on": "sometimes"}),
        service.client.post("/v1/runs/shape/halt", json={}),
        service.client.post("/v1/alertmanager", json={"version": "3"}),
        service.client.post("/v1/runs/shape/steps", json={"protocol": 2}),
    ):
        assert response.status_code == 422, response.text
        for detail in response.json()["detail"]:
            assert {"loc", "msg", "type"} <= set(detail), detail


def test_every_response_carries_the_security_headers(service: Service) -> None:
    register(service.client, "h")
    for response in (
        service.client.get("/v1/runs/h"),
        service.client.get("/v1/runs/nobody"),
        service.client.get("/metrics"),
        service.client.get("/healthz"),
        service.client.post("/v1/runs/h/halt", json={}),
        service.client.get("/docs"),
        service.client.get("/no/such/path"),
    ):
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        if not headers["content-type"].startswith("text/html"):
            assert headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize(
    ("path", "methods"),
    [("/v1/runs/r", "GET, PUT, DELETE"), ("/v1/runs/r/steps", "GET, POST"), ("/v1/runs/r/halt", "POST")],
)
def test_a_405_lists_every_method_of_the_path(service: Service, path: str, methods: str) -> None:
    response = service.client.request("PATCH", path)
    assert response.status_code == 405 and response.headers["allow"] == methods
