"""Alertmanager's webhook halts the runs its firing alerts name, once."""

from __future__ import annotations

from typing import Any

from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply


def _payload(status: str, *labels: dict[str, str]) -> dict[str, Any]:
    alerts = [
        {
            "status": status,
            "labels": {"alertname": "NanwatchRunCritical", **lab},
            "annotations": {"summary": "run is critical"},
        }
        for lab in labels
    ]
    return {"version": "4", "status": status, "receiver": "nanwatch-halt", "groupKey": "{}", "alerts": alerts}


def test_a_firing_alert_halts_its_run_through_the_next_ingest_reply(service: Service) -> None:
    register(service.client, "am")
    reply(post_steps(service.client, "am", [record(0)]))
    body = _payload("firing", {"run_id": "am"}, {"run_id": "nobody"}, {"job": "nanwatch"})
    outcome = service.client.post("/v1/alertmanager", json=body).json()
    assert [h["run_id"] for h in outcome["halted"]] == ["am"]
    assert len(outcome["skipped"]) == 2
    again = service.client.post("/v1/alertmanager", json=body).json()  # Alertmanager repeats itself
    assert again["halted"][0]["created"] is False
    seen = [c for s in range(1, 4) for c in reply(post_steps(service.client, "am", [record(s)]))["commands"]]
    assert len(seen) == 1 and seen[0]["source"] == "alertmanager" and "NanwatchRunCritical" in seen[0]["reason"]


def test_resolved_alerts_halt_nothing(service: Service) -> None:
    register(service.client, "calm")
    outcome = service.client.post("/v1/alertmanager", json=_payload("resolved", {"run_id": "calm"})).json()
    assert outcome == {"halted": [], "skipped": []}


def test_a_payload_that_is_not_version_4_is_422(service: Service) -> None:
    response = service.client.post("/v1/alertmanager", json={"alerts": []})
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "version"
