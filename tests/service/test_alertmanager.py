"""Alertmanager's webhook halts the runs its new firing alerts name, once, and records every notification."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanwatch_service.settings import Settings
from tests.conftest import Service, ServiceThread
from tests.service.helpers import post_steps, record, register, reply

STARTED = "2026-12-06T07:00:00.000Z"


def _alert(status: str, labels: dict[str, str], starts_at: str = STARTED) -> dict[str, Any]:
    labels = {"alertname": "NanwatchRunCritical", **labels}
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"run {labels.get('run_id')} is critical", "runbook": "read the events"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }


def _payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "status": status, "receiver": "nanwatch-halt", "groupKey": "{}", "alerts": list(alerts)}


def _commands(service: Service, run_id: str, steps: range) -> list[dict[str, Any]]:
    return [c for s in steps for c in reply(post_steps(service.client, run_id, [record(s)]))["commands"]]


def _alert_events(service: Service, run_id: str) -> list[dict[str, Any]]:
    events = service.client.get(f"/v1/runs/{run_id}/events", params={"detector": "alertmanager"}).json()["events"]
    return list(events)


def test_a_firing_alert_halts_its_run_through_the_next_ingest_reply(service: Service) -> None:
    register(service.client, "am")
    reply(post_steps(service.client, "am", [record(0)]))
    body = _payload(
        _alert("firing", {"run_id": "am"}), _alert("firing", {"run_id": "nobody"}), _alert("firing", {"job": "x"})
    )
    outcome = service.client.post("/v1/alertmanager", json=body).json()
    assert [(h["run_id"], h["created"]) for h in outcome["halted"]] == [("am", True)]
    assert [s["why"] for s in outcome["skipped"]] == ["unknown run", "no valid run_id label"]
    [command] = _commands(service, "am", range(1, 4))
    assert command["source"] == "alertmanager" and "NanwatchRunCritical" in command["reason"]


def test_repeated_deliveries_halt_once_and_are_recorded_once(service: Service) -> None:
    register(service.client, "repeat")
    reply(post_steps(service.client, "repeat", [record(0)]))
    body = _payload(_alert("firing", {"run_id": "repeat"}))
    first = service.client.post("/v1/alertmanager", json=body).json()
    again = service.client.post("/v1/alertmanager", json=body).json()  # repeat_interval, or a lost reply
    assert len(first["halted"]) == 1 and first["duplicates"] == 0
    assert again == {"halted": [], "recorded": [], "duplicates": 1, "skipped": []}
    [event] = _alert_events(service, "repeat")
    assert event["severity"] == "info" and event["state"] == "closed"
    assert event["alert"]["status"] == "firing" and event["alert"]["starts_at"] == STARTED
    assert event["alert"]["annotations"]["runbook"] == event["remedy"] == "read the events"
    assert len(_commands(service, "repeat", range(1, 4))) == 1


def test_a_group_update_repeats_old_alerts_and_only_the_new_one_acts(service: Service) -> None:
    for run_id in ("old", "new"):
        register(service.client, run_id)
        reply(post_steps(service.client, run_id, [record(0)]))
    old = _alert("firing", {"run_id": "old"})
    service.client.post("/v1/alertmanager", json=_payload(old))
    outcome = service.client.post("/v1/alertmanager", json=_payload(old, _alert("firing", {"run_id": "new"}))).json()
    assert [h["run_id"] for h in outcome["halted"]] == ["new"] and outcome["duplicates"] == 1


def test_a_halt_is_idempotent_across_distinct_alerts_of_one_run(service: Service) -> None:
    register(service.client, "twice")
    reply(post_steps(service.client, "twice", [record(0)]))
    critical = _alert("firing", {"run_id": "twice"})
    forecast = _alert("firing", {"run_id": "twice", "alertname": "NanwatchNonfiniteForecast"})
    outcome = service.client.post("/v1/alertmanager", json=_payload(critical, forecast)).json()
    assert [h["created"] for h in outcome["halted"]] == [True, False]
    assert outcome["halted"][0]["command_id"] == outcome["halted"][1]["command_id"]
    assert len(_alert_events(service, "twice")) == 2
    assert len(_commands(service, "twice", range(1, 4))) == 1


def test_a_resolved_alert_is_recorded_but_halts_nothing(service: Service) -> None:
    register(service.client, "calm")
    reply(post_steps(service.client, "calm", [record(0)]))
    outcome = service.client.post("/v1/alertmanager", json=_payload(_alert("resolved", {"run_id": "calm"}))).json()
    assert outcome["halted"] == [] and outcome["recorded"] == [
        {"run_id": "calm", "alertname": "NanwatchRunCritical", "status": "resolved"}
    ]
    [event] = _alert_events(service, "calm")
    assert event["alert"]["status"] == "resolved" and "resolved" in event["message"]
    assert _commands(service, "calm", range(1, 3)) == []
    assert service.client.get("/v1/runs/calm").json()["health"] == "ok"


def test_an_alert_that_fires_again_after_a_resume_halts_again(service: Service) -> None:
    register(service.client, "resumed")
    reply(post_steps(service.client, "resumed", [record(0)]))
    service.client.post("/v1/alertmanager", json=_payload(_alert("firing", {"run_id": "resumed"})))
    [command] = _commands(service, "resumed", range(1, 2))
    reply(post_steps(service.client, "resumed", [], acks=[{"id": command["id"], "step": 1}]))
    assert service.client.get("/v1/runs/resumed").json()["status"] == "halted"
    register(service.client, "resumed")  # the job restarts from its checkpoint
    later = _alert("firing", {"run_id": "resumed"}, starts_at="2026-12-06T07:05:00.000Z")  # same fingerprint
    outcome = service.client.post("/v1/alertmanager", json=_payload(later)).json()
    assert [h["created"] for h in outcome["halted"]] == [True]


def _changed(**fields: Any) -> dict[str, Any]:
    """A payload of one good alert and one with ``fields`` changed (None: left out)."""
    alert = {**_alert("firing", {"run_id": "bad"}), **fields}
    return _payload(_alert("firing", {"run_id": "bad"}), {k: v for k, v in alert.items() if v is not None})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"alerts": []}, "version"),
        ({"version": "4", "alerts": {"a": 1}}, "alerts"),
        ({"version": "4", "alerts": ["firing"]}, "alerts[0]"),
        (_changed(status="pending"), "alerts[1].status"),
        (_changed(labels=None), "alerts[1].labels"),
        (_changed(labels={"run_id": 7}), "alerts[1].labels"),
        (_changed(annotations=[]), "alerts[1].annotations"),
        (_changed(fingerprint=None), "alerts[1].fingerprint"),
        (_changed(startsAt=""), "alerts[1].startsAt"),
    ],
)
def test_a_malformed_payload_is_422_naming_the_field_and_halts_nothing(
    service: Service, body: dict[str, Any], field: str
) -> None:
    register(service.client, "bad")
    reply(post_steps(service.client, "bad", [record(0)]))
    response = service.client.post("/v1/alertmanager", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == field
    assert _commands(service, "bad", range(1, 3)) == [] and _alert_events(service, "bad") == []


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[httpx.Client]:
    """A service with the legacy tokens: NANWATCH_TOKEN (admin) and NANWATCH_WEBHOOK_TOKEN (operator)."""
    settings = Settings(db=str(tmp_path / "nanwatch.db"), token="admin-secret", webhook_token="webhook-secret")
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_the_legacy_webhook_token_is_an_operator_of_every_team(guarded: httpx.Client) -> None:
    admin = {"Authorization": "Bearer admin-secret"}
    hook = {"Authorization": "Bearer webhook-secret"}
    guarded.headers.update(admin)  # the helpers send no token of their own
    register(guarded, "locked")
    del guarded.headers["Authorization"]
    body = _payload(_alert("firing", {"run_id": "locked"}))
    assert guarded.post("/v1/alertmanager", json=body).status_code == 401
    wrong = guarded.post("/v1/alertmanager", json=body, headers={"Authorization": "Bearer webhook-secretx"})
    assert wrong.status_code == 401 and "webhook-secret" not in wrong.text
    [halted] = guarded.post("/v1/alertmanager", json=body, headers=hook).json()["halted"]
    assert halted["created"] is True
    assert guarded.post("/v1/alertmanager", json=body, headers=admin).json()["duplicates"] == 1
    command = guarded.post("/v1/runs/locked/halt", json={"reason": "x"}, headers=hook).json()["command"]
    assert command["sent_by"] == "NANWATCH_WEBHOOK_TOKEN"  # the alert's halt, still in force
    assert guarded.delete("/v1/runs/locked", headers=hook).status_code == 403  # an operator, not an admin


def test_a_webhook_token_alone_closes_every_call(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "nanwatch.db"), webhook_token="webhook-secret")
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.put("/v1/runs/open-writes", json={"name": "x"}).status_code == 401
        client.headers["Authorization"] = "Bearer webhook-secret"
        register(client, "open-writes")
        body = _payload(_alert("firing", {"run_id": "open-writes"}))
        assert client.post("/v1/alertmanager", json=body).status_code == 200
        del client.headers["Authorization"]
        assert client.post("/v1/alertmanager", json=body).status_code == 401
