"""History reads: resumed jobs keep both attempts, field selection, downsampling, paging, run lists."""

from __future__ import annotations

from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply


def test_a_resumed_job_keeps_both_attempts_of_the_same_steps(service: Service) -> None:
    register(service.client, "resumed", halt_on="never")
    reply(post_steps(service.client, "resumed", [record(s, loss=1.0) for s in range(10)], attempt="first"))
    reply(post_steps(service.client, "resumed", [record(s, loss=2.0) for s in range(5, 12)], attempt="second"))
    rows = service.client.get("/v1/runs/resumed/steps").json()["steps"]
    assert len(rows) == 17
    step7 = [(r["attempt"], r["loss"]) for r in rows if r["step"] == 7]
    assert step7 == [("first", 1.0), ("second", 2.0)]
    second = service.client.get("/v1/runs/resumed/steps", params={"attempt": "second"}).json()["steps"]
    assert [r["step"] for r in second] == list(range(5, 12))
    assert service.client.get("/v1/runs/resumed").json()["records"] == 17


def test_history_selects_fields_ranges_downsamples_and_pages(service: Service) -> None:
    register(service.client, "long", halt_on="never")
    reply(post_steps(service.client, "long", [record(s, loss=float(s)) for s in range(100)]))
    rows = service.client.get(
        "/v1/runs/long/steps", params={"fields": "loss", "start": 10, "end": 49, "every": 10}
    ).json()["steps"]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert set(rows[0]) == {"seq", "attempt", "received_at", "step", "loss"}
    page = service.client.get("/v1/runs/long/steps", params={"limit": 30}).json()
    rest = service.client.get("/v1/runs/long/steps", params={"limit": 100, "after_seq": page["next_after_seq"]}).json()
    assert [r["step"] for r in page["steps"] + rest["steps"]] == list(range(100))
    assert rest["next_after_seq"] is None


def test_runs_are_listed_filtered_by_team_and_paged(service: Service) -> None:
    for i in range(5):
        register(service.client, f"r{i}", team="nlp" if i % 2 else "vision")
    nlp = service.client.get("/v1/runs", params={"team": "nlp"}).json()["runs"]
    assert sorted(r["run_id"] for r in nlp) == ["r1", "r3"]
    first = service.client.get("/v1/runs", params={"limit": 3}).json()
    second = service.client.get("/v1/runs", params={"limit": 3, "offset": first["next_offset"]}).json()
    names = [r["run_id"] for r in first["runs"] + second["runs"]]
    assert sorted(names) == [f"r{i}" for i in range(5)] and second["next_offset"] is None


def test_run_view_shows_status_health_last_step_and_forecast(service: Service) -> None:
    register(service.client, "view", halt_on="never")
    reply(post_steps(service.client, "view", [record(s) for s in range(4)]))
    view = service.client.get("/v1/runs/view").json()
    assert view["status"] == "running" and view["health"] == "ok" and view["last_step"] == 3
    assert view["steps_to_nonfinite"] == "Infinity"
    assert [layer["name"] for layer in view["layers"]] == ["dense", "my_custom_layer", "out"]


def test_a_batch_re_sent_after_a_lost_reply_is_stored_once(service: Service) -> None:
    register(service.client, "resend", halt_on="never")
    batch = [record(s) for s in range(5)]
    assert reply(post_steps(service.client, "resend", batch))["accepted"] == 5
    assert reply(post_steps(service.client, "resend", batch))["accepted"] == 5  # the reply was lost; retried
    assert [r["step"] for r in service.client.get("/v1/runs/resend/steps").json()["steps"]] == list(range(5))
    assert service.client.get("/v1/runs/resend").json()["records"] == 5
