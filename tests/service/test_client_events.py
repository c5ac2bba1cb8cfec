"""Events the job reports itself (a recovery): stored with the run's events, counted, and a recovery that
answered a halt leaves the run running."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply

RECOVERY = {"rolled_back_to": 0, "batches_skipped": 6, "lr": 5e-4, "lr_factor": 0.5, "recovery": 1}


def _recovery(step: int, command_id: str = "") -> dict[str, object]:
    details = {**RECOVERY, "command_id": command_id}
    return {"step": step, "kind": "recovery", "message": "rolled back to step 0", "details": details}


def _events_total(service: Service, run_id: str) -> dict[tuple[str, str], float]:
    text = service.client.get("/metrics").text
    return {
        (s.labels["detector"], s.labels["severity"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "nanwatch_events_total" and s.labels.get("run_id") == run_id
    }


def test_a_reported_event_is_listed_with_its_details_and_counted(service: Service) -> None:
    register(service.client, "rec")
    reply(post_steps(service.client, "rec", [record(0), record(1)], events=[_recovery(1)]))

    [event] = service.client.get("/v1/runs/rec/events", params={"detector": "recovery"}).json()["events"]
    assert (event["step"], event["severity"], event["state"], event["layer"]) == (1, "info", "closed", None)
    assert event["message"] == "rolled back to step 0"
    assert event["details"] == {**RECOVERY, "command_id": ""}
    assert _events_total(service, "rec")[("recovery", "info")] == 1.0
    assert service.client.get("/v1/runs/rec").json()["health"] == "ok"  # info does not count


def test_a_recovery_that_answers_a_halt_leaves_the_run_running_and_haltable_again(service: Service) -> None:
    register(service.client, "back")
    [command] = reply(post_steps(service.client, "back", [record(0), record(1, loss=math.nan)]))["commands"]
    ack = {"id": command["id"], "step": 1}
    reply(post_steps(service.client, "back", [record(2)], acks=[ack], events=[_recovery(1, command["id"])]))

    view = service.client.get("/v1/runs/back").json()
    assert view["status"] == "running" and view["halt"] is None
    [again] = reply(post_steps(service.client, "back", [record(3, loss=math.inf)]))["commands"]
    assert again["id"] != command["id"]
    reply(post_steps(service.client, "back", [record(4)], acks=[{"id": again["id"], "step": 4}]))
    assert service.client.get("/v1/runs/back").json()["status"] == "halted"


def test_findings_on_records_a_recovery_undid_halt_nothing_and_later_ones_do(service: Service) -> None:
    register(service.client, "undo")
    [command] = reply(post_steps(service.client, "undo", [record(0, loss=math.nan)]))["commands"]
    # a job a few steps behind: step 1 (before its recovery) was non-finite too
    batch = {"acks": [{"id": command["id"], "step": 1}], "events": [_recovery(1, command["id"])]}
    assert reply(post_steps(service.client, "undo", [record(1, loss=math.nan)], **batch))["commands"] == []
    [fresh] = reply(post_steps(service.client, "undo", [record(2, loss=math.nan)]))["commands"]
    assert fresh["id"] != command["id"] and service.client.get("/v1/runs/undo").json()["status"] == "running"


def test_a_recovery_reported_after_its_ack_still_lets_the_next_finding_halt(service: Service) -> None:
    """The ack and the event may travel in two batches (the sender took one between them)."""
    register(service.client, "split")
    [command] = reply(post_steps(service.client, "split", [record(0, loss=math.nan)]))["commands"]
    reply(post_steps(service.client, "split", [], acks=[{"id": command["id"], "step": 0}]))
    assert service.client.get("/v1/runs/split").json()["status"] == "halted"
    events = [_recovery(0, command["id"])]
    answer = reply(post_steps(service.client, "split", [record(1, loss=math.nan)], events=events))
    assert [c["step"] for c in answer["commands"]] == [1]


def test_an_event_that_does_not_follow_the_protocol_is_422_and_stores_nothing(service: Service) -> None:
    register(service.client, "bad")
    bad = {"step": 1, "kind": "Recovery!", "message": "", "details": {}}
    response = post_steps(service.client, "bad", [record(0)], events=[bad])
    assert response.status_code == 422 and "events[0].kind" in response.text
    assert service.client.get("/v1/runs/bad/events").json()["events"] == []
