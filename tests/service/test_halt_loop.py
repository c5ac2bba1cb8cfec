"""The loop closes: a non-finite layer raises a critical event, the halt rides back, the ack lands."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time

import httpx

from tests.conftest import Service
from tests.service.helpers import post_steps, record, register, reply


def test_nonfinite_activation_names_the_layer_and_halts_the_run(service: Service) -> None:
    register(service.client, "div0")
    healthy = [record(step) for step in range(5)]
    assert reply(post_steps(service.client, "div0", healthy))["commands"] == []
    poisoned = record(5, act_frac_nonfinite=[0.0, 0.4, 0.0], act_max_abs=[2.0, math.inf, 2.0])
    answer = reply(post_steps(service.client, "div0", [poisoned]))

    events = service.client.get("/v1/runs/div0/events").json()["events"]
    critical = [e for e in events if e["severity"] == "critical"]
    assert critical and critical[0]["detector"] == "nonfinite"
    assert critical[0]["layer"] == "my_custom_layer" and critical[0]["step"] == 5
    assert critical[0]["remedy"]

    [command] = answer["commands"]
    assert command["action"] == "halt" and command["source"] == "detector"
    assert "my_custom_layer" in command["reason"] and command["at_step"] == 5

    view = service.client.get("/v1/runs/div0").json()
    assert view["status"] == "running" and view["health"] == "critical"
    reply(post_steps(service.client, "div0", [record(6)], acks=[{"id": command["id"], "step": 6}]))
    view = service.client.get("/v1/runs/div0").json()
    assert view["status"] == "halted"
    assert view["halt"]["acked_step"] == 6 and view["halt"]["command_id"] == command["id"]


def test_halt_policy_never_records_the_event_but_sends_no_halt(service: Service) -> None:
    register(service.client, "free", halt_on="never")
    answer = reply(post_steps(service.client, "free", [record(0, loss=math.nan)]))
    assert answer["commands"] == []
    severities = {e["severity"] for e in service.client.get("/v1/runs/free/events").json()["events"]}
    assert "critical" in severities


def _commands_seen(service: Service, run_id: str, steps: range) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    for step in steps:
        seen += reply(post_steps(service.client, run_id, [record(step)]))["commands"]
    return seen


def test_operator_halt_over_rest_reaches_the_job_exactly_once(service: Service) -> None:
    register(service.client, "op")
    reply(post_steps(service.client, "op", [record(0)]))
    first = service.client.post("/v1/runs/op/halt", json={"reason": "wrong learning rate"})
    again = service.client.post("/v1/runs/op/halt", json={"reason": "wrong learning rate"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["command"]["id"] == first.json()["command"]["id"]
    seen = _commands_seen(service, "op", range(1, 6))
    assert [c["id"] for c in seen] == [first.json()["command"]["id"]]
    assert seen[0]["source"] == "operator" and seen[0]["reason"] == "wrong learning rate"
    assert seen[0]["at_step"] == 0


def test_a_halt_is_visible_on_the_run_from_the_moment_it_exists(service: Service) -> None:
    register(service.client, "seen-early")
    reply(post_steps(service.client, "seen-early", [record(s) for s in range(3)]))
    command = service.client.post("/v1/runs/seen-early/halt", json={"reason": "loss plateaued"}).json()["command"]
    for view in (service.client.get("/v1/runs/seen-early").json(), service.client.get("/v1/runs").json()["runs"][0]):
        halt = view["halt"]
        assert (halt["state"], halt["command_id"], halt["source"]) == ("pending", command["id"], "operator")
        assert (halt["reason"], halt["at_step"], halt["acked_step"]) == ("loss plateaued", 2, None)
        assert halt["created_at"] > 0 and view["status"] == "running"
    reply(post_steps(service.client, "seen-early", [record(3)], acks=[{"id": command["id"], "step": 3}]))
    halt = service.client.get("/v1/runs/seen-early").json()["halt"]
    assert (halt["state"], halt["acked_step"]) == ("acknowledged", 3)


def test_the_command_channel_hands_out_a_halt_the_moment_it_is_sent(service: Service) -> None:
    register(service.client, "waiting")
    reply(post_steps(service.client, "waiting", [record(0)]))
    answer: list[httpx.Response] = []
    poll = threading.Thread(
        target=lambda: answer.append(service.client.get("/v1/runs/waiting/commands", params={"wait": 30}))
    )
    poll.start()
    time.sleep(0.3)  # the poll is waiting now (nothing pending); ordering only, nothing is timed
    command = service.client.post("/v1/runs/waiting/halt", json={"reason": "now"}).json()["command"]
    poll.join(30)
    assert [c["id"] for c in answer[0].json()["commands"]] == [command["id"]]
    known = service.client.get("/v1/runs/waiting/commands", params={"wait": 0, "known": command["id"]})
    assert known.json()["commands"] == []
    assert service.client.get("/v1/runs/nope/commands", params={"wait": 0}).status_code == 404


def test_operator_halt_from_the_cli_reaches_the_job_exactly_once(service: Service) -> None:
    register(service.client, "cli-op")
    reply(post_steps(service.client, "cli-op", [record(0)]))
    for _ in range(2):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "nanwatch_service.cli",
                "halt",
                "cli-op",
                "--reason",
                "budget",
                "--url",
                service.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "already in force" in done.stdout
    seen = _commands_seen(service, "cli-op", range(1, 6))
    assert len(seen) == 1 and seen[0]["reason"] == "budget"


def test_a_run_that_registers_again_after_a_halt_runs_and_can_be_halted_again(service: Service) -> None:
    register(service.client, "resume")
    command = service.client.post("/v1/runs/resume/halt", json={"reason": "first"}).json()["command"]
    reply(post_steps(service.client, "resume", [record(0)], acks=[{"id": command["id"], "step": 0}]))
    assert service.client.get("/v1/runs/resume").json()["status"] == "halted"
    register(service.client, "resume")
    assert service.client.get("/v1/runs/resume").json()["status"] == "running"
    second = service.client.post("/v1/runs/resume/halt", json={"reason": "second"})
    assert second.status_code == 202 and second.json()["command"]["id"] != command["id"]


def test_a_final_batch_marks_the_run_finished(service: Service) -> None:
    register(service.client, "done")
    reply(post_steps(service.client, "done", [record(0)], final=True))
    assert service.client.get("/v1/runs/done").json()["status"] == "finished"
    runs = service.client.get("/v1/runs", params={"status": "finished"}).json()["runs"]
    assert [r["run_id"] for r in runs] == ["done"]
