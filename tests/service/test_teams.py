"""Teams and roles: with a tokens file every call needs a token, a team sees and touches only its own runs
(another team's run reads exactly like a missing one), and each role opens what it says."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanwatch_service.auth import add_token
from nanwatch_service.settings import Settings
from tests.conftest import ServiceThread
from tests.service.helpers import LAYERS, record

TOKENS = {  # name: (team, role)
    "vision-reader": ("vision", "reader"),
    "vision-writer": ("vision", "writer"),
    "vision-operator": ("vision", "operator"),
    "nlp-writer": ("nlp", "writer"),
    "nlp-operator": ("nlp", "operator"),
    "cluster-operator": ("*", "operator"),
    "cluster-writer": ("*", "writer"),
    "admin": ("ops", "admin"),
}


@dataclass
class Teams:
    """A service with a tokens file holding :data:`TOKENS`; ``as_(name)`` is a client holding that token."""

    url: str
    tokens: dict[str, str]
    file: Path

    def as_(self, name: str | None) -> httpx.Client:
        headers = {} if name is None else {"Authorization": f"Bearer {self.tokens[name]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, name: str | None, method: str, path: str, body: Any = None) -> httpx.Response:
        with self.as_(name) as client:
            return client.request(method, path, json=body)


@pytest.fixture
def teams(tmp_path: Path) -> Iterator[Teams]:
    file = tmp_path / "tokens.toml"
    tokens = {name: add_token(file, name=name, team=team, role=role) for name, (team, role) in TOKENS.items()}
    settings = Settings(db=str(tmp_path / "nanwatch.db"), tokens_file=str(file))
    with ServiceThread(settings) as server:
        teams = Teams(server.url, tokens, file)
        _run(teams, "vision-writer", "vis-run")
        _run(teams, "nlp-writer", "nlp-run")
        yield teams


def _run(teams: Teams, writer: str, run_id: str, **fields: Any) -> dict[str, Any]:
    body = {"name": run_id, "framework": "test", "layers": LAYERS, **fields}
    response = teams.call(writer, "PUT", f"/v1/runs/{run_id}", body)
    assert response.status_code in (200, 201), response.text
    steps = {"protocol": 1, "attempt": "a1", "records": [record(0), record(1)]}
    assert teams.call(writer, "POST", f"/v1/runs/{run_id}/steps", steps).status_code == 200
    result: dict[str, Any] = response.json()
    return result


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with {run_id}
    body: Any
    owner: str  # a token of team vision with just the role this needs
    too_weak: str  # a token of team vision one role short


STEPS = {"protocol": 1, "attempt": "a2", "records": [record(5)]}
RUN_ENDPOINTS = [
    Endpoint("GET", "/v1/runs/{run_id}", None, "vision-reader", ""),
    Endpoint("GET", "/v1/runs/{run_id}/steps", None, "vision-reader", ""),
    Endpoint("GET", "/v1/runs/{run_id}/events", None, "vision-reader", ""),
    Endpoint("PUT", "/v1/runs/{run_id}", {"name": "renamed", "layers": LAYERS}, "vision-writer", "vision-reader"),
    Endpoint("POST", "/v1/runs/{run_id}/steps", STEPS, "vision-writer", "vision-reader"),
    Endpoint("POST", "/v1/runs/{run_id}/halt", {"reason": "looks bad"}, "vision-operator", "vision-writer"),
]
IDS = [f"{e.method} {e.path}" for e in RUN_ENDPOINTS]
GUARDED = [e for e in RUN_ENDPOINTS if e.too_weak]


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS, ids=IDS)
def test_the_owning_team_reaches_its_run(teams: Teams, endpoint: Endpoint) -> None:
    response = teams.call(endpoint.owner, endpoint.method, endpoint.path.format(run_id="vis-run"), endpoint.body)
    assert response.status_code in (200, 202), response.text


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS, ids=IDS)
def test_another_teams_run_is_the_same_404_as_a_missing_one(teams: Teams, endpoint: Endpoint) -> None:
    other = endpoint.owner.replace("vision", "nlp") if "reader" not in endpoint.owner else "nlp-writer"
    hidden = teams.call(other, endpoint.method, endpoint.path.format(run_id="vis-run"), endpoint.body)
    assert hidden.status_code == 404, hidden.text
    if endpoint.method != "PUT":  # a PUT of a free id registers it; of a taken one it says the id is taken
        missing = teams.call(other, endpoint.method, endpoint.path.format(run_id="no-run"), endpoint.body)
        assert hidden.json()["detail"] == missing.json()["detail"].replace("no-run", "vis-run")
    assert teams.call("vision-reader", "GET", "/v1/runs/vis-run").json()["name"] == "vis-run"  # untouched


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS, ids=IDS)
def test_a_call_without_a_known_token_is_401(teams: Teams, endpoint: Endpoint) -> None:
    path = endpoint.path.format(run_id="vis-run")
    assert teams.call(None, endpoint.method, path, endpoint.body).status_code == 401
    with httpx.Client(base_url=teams.url, headers={"Authorization": "Bearer not-a-token"}) as stranger:
        response = stranger.request(endpoint.method, path, json=endpoint.body)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("endpoint", GUARDED, ids=[f"{e.method} {e.path}" for e in GUARDED])
def test_a_role_short_of_what_the_call_needs_is_403(teams: Teams, endpoint: Endpoint) -> None:
    path = endpoint.path.format(run_id="vis-run")
    response = teams.call(endpoint.too_weak, endpoint.method, path, endpoint.body)
    assert response.status_code == 403 and endpoint.too_weak in response.json()["detail"]
    assert teams.call("vision-reader", "GET", "/v1/runs/vis-run").json()["halt"] is None


def test_a_cluster_wide_operator_halts_any_run_and_the_halt_names_it(teams: Teams) -> None:
    for run_id in ("vis-run", "nlp-run"):
        response = teams.call("cluster-operator", "POST", f"/v1/runs/{run_id}/halt", {"reason": "maintenance"})
        assert response.status_code == 202
        assert response.json()["command"]["sent_by"] == "cluster-operator"
        steps = {"protocol": 1, "attempt": "a1", "records": [record(2)]}
        writer = "vision-writer" if run_id == "vis-run" else "nlp-writer"
        [command] = teams.call(writer, "POST", f"/v1/runs/{run_id}/steps", steps).json()["commands"]
        ack = {"protocol": 1, "attempt": "a1", "records": [], "acks": [{"id": command["id"], "step": 2}]}
        teams.call(writer, "POST", f"/v1/runs/{run_id}/steps", ack)
        halt = teams.call("admin", "GET", f"/v1/runs/{run_id}").json()["halt"]
        assert halt["sent_by"] == "cluster-operator" and halt["reason"] == "maintenance"


def test_listings_show_the_callers_team_and_every_team_to_star_and_admin(teams: Teams) -> None:
    def listed(name: str, **params: str) -> list[str]:
        with teams.as_(name) as client:
            return sorted(run["run_id"] for run in client.get("/v1/runs", params=params).json()["runs"])

    assert listed("vision-reader") == ["vis-run"]
    assert listed("nlp-writer") == ["nlp-run"]
    assert listed("vision-reader", team="nlp") == []
    assert listed("cluster-operator") == listed("admin") == ["nlp-run", "vis-run"]
    assert listed("admin", team="nlp") == ["nlp-run"]
    assert teams.call(None, "GET", "/v1/runs").status_code == 401


def test_a_run_belongs_to_the_token_team_whatever_the_registration_says(teams: Teams) -> None:
    assert _run(teams, "vision-writer", "claims-nlp", team="nlp")["team"] == "vision"
    assert teams.call("nlp-writer", "GET", "/v1/runs/claims-nlp").status_code == 404
    assert _run(teams, "cluster-writer", "for-nlp", team="nlp")["team"] == "nlp"
    assert teams.call("nlp-writer", "GET", "/v1/runs/for-nlp").status_code == 200


def test_a_taken_run_id_is_not_registered_over(teams: Teams) -> None:
    response = teams.call("nlp-writer", "PUT", "/v1/runs/vis-run", {"name": "mine now", "layers": LAYERS})
    assert response.status_code == 404 and "taken" in response.json()["detail"]
    run = teams.call("admin", "GET", "/v1/runs/vis-run").json()
    assert (run["team"], run["name"]) == ("vision", "vis-run")


def test_only_an_admin_deletes_a_run_and_it_is_gone_with_its_history(teams: Teams) -> None:
    assert teams.call("vision-operator", "DELETE", "/v1/runs/vis-run").status_code == 403
    assert teams.call("admin", "DELETE", "/v1/runs/vis-run").status_code == 204
    assert teams.call("admin", "GET", "/v1/runs/vis-run").status_code == 404
    assert teams.call("admin", "DELETE", "/v1/runs/vis-run").status_code == 404
    _run(teams, "vision-writer", "vis-run")  # the id is free again, and starts empty
    assert len(teams.call("vision-reader", "GET", "/v1/runs/vis-run/steps").json()["steps"]) == 2


def test_probes_and_metrics_need_no_token(teams: Teams) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert teams.call(None, "GET", path).status_code == 200, path


def test_the_webhook_needs_an_operator_and_skips_runs_its_team_does_not_see(teams: Teams) -> None:
    alert = {"status": "firing", "fingerprint": "f1", "startsAt": "2026-01-01T00:00:00Z"}
    body = {
        "version": "4",
        "alerts": [{**alert, "labels": {"run_id": run_id}, "fingerprint": run_id} for run_id in ("vis-run", "nlp-run")],
    }
    assert teams.call("nlp-writer", "POST", "/v1/alertmanager", body).status_code == 403
    outcome = teams.call("nlp-operator", "POST", "/v1/alertmanager", body).json()
    assert [h["run_id"] for h in outcome["halted"]] == ["nlp-run"]
    assert outcome["skipped"] == [{"run_id": "vis-run", "alertname": "unnamed", "why": "unknown run"}]


def test_a_token_added_to_the_file_works_without_a_restart(teams: Teams) -> None:
    from tests.conftest import wait_until

    late = add_token(teams.file, name="late-reader", team="vision", role="reader")
    teams.tokens["late-reader"] = late
    wait_until(lambda: teams.call("late-reader", "GET", "/v1/runs/vis-run").status_code == 200, what="the new token")
    assert teams.call("late-reader", "GET", "/v1/runs/nlp-run").status_code == 404
