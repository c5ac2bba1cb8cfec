"""The real halt chain, as shipped: nanwatch → Prometheus → Alertmanager → the webhook halts a diverging job
before its first non-finite value, and leaves a healthy job alone.

On free loopback ports: ``nanwatch serve`` (with the shipped tokens file, which holds the webhook's token, and
a writer token of team "chain" added to a copy of it by ``nanwatch tokens add``), Prometheus
with deploy/prometheus/prometheus.yml and its rule files, Alertmanager with
deploy/alertmanager/alertmanager.yml and its credentials file; only hosts and ports are rewritten. Two jobs
stream through ``nanwatch.Monitor(..., halt_on="never")`` (so only an alert can stop them), a step every
0.5 s: one whose global gradient norm starts at 1e25 and grows ×1.4 a step, which would pass float32's
largest value at step 93 and send NaN there, and one whose numbers are noisy but healthy.

The test prints each hop of the halt (record sent → sample scraped → alert pending/firing → notification
received → halt delivered) and asserts none of their durations. Then every PromQL expression of the
alert rules (each alert's signal and each selector) and of both Grafana dashboards (variables filled in
with this test's team and diverging run) is run against this Prometheus over the test's time range; an
empty one fails the test.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from nanwatch import Halt, Monitor
from nanwatch_service.auth import add_token
from tests.conftest import ServiceProcess, wait_until
from tests.deploy.promql import dashboard_queries, selectors, signal, substitute, variable_queries
from tests.deploy.stack import PROM_DIR, ROOT, Daemon, PrometheusApi, alertmanager, prometheus

TEAM = "chain"
STEP_S = 0.5
START_GRAD_NORM = 1e25
GROWTH = 1.4
FLOAT32_MAX = 3.4028234663852886e38
FIRST_NONFINITE_STEP = next(s for s in range(1000) if START_GRAD_NORM * GROWTH**s > FLOAT32_MAX)
LAYERS = [
    {"name": "dense", "kind": "Dense", "activation": "relu", "params": 4160, "dtype": "float16"},
    {"name": "dense_1", "kind": "Dense", "activation": "relu", "params": 4160, "dtype": "float16"},
    {"name": "out", "kind": "Dense", "activation": None, "params": 65, "dtype": "float32"},
]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def diverging(step: int) -> dict[str, Any]:
    """The diverging job's numbers: the norm grows ×1.4 a step until float32 overflows, then NaN."""
    norm = START_GRAD_NORM * GROWTH**step
    if norm > FLOAT32_MAX:
        norm = math.nan  # inf in float32, and the update's inf - inf is NaN
    layers = {"grad_norm": [0.8 * norm, 0.55 * norm, 0.2 * norm], "act_max_abs": [3.0, 5.5, 2.0]}
    loss = 0.7 * 1.02**step if math.isfinite(norm) else math.nan
    return {"loss": loss, "grad_norm": norm, "loss_scale": 32768.0, "layers": layers}


def healthy(rng: random.Random) -> Callable[[int], dict[str, Any]]:
    """A healthy job's numbers: a slowly falling loss and a gradient norm, both noisy."""

    def values(step: int) -> dict[str, Any]:
        norm = 1.2 * math.exp(rng.gauss(0.0, 0.35))
        layers = {
            "grad_norm": [0.8 * norm, 0.55 * norm, 0.2 * norm],
            "act_max_abs": [abs(rng.gauss(3.0, 1.0)) + 0.5, abs(rng.gauss(5.0, 1.5)) + 0.5, 2.0],
        }
        loss = 0.9 * 0.995**step * math.exp(rng.gauss(0.0, 0.2))
        return {"loss": loss, "grad_norm": norm, "loss_scale": 32768.0, "layers": layers}

    return values


@dataclass
class Job:
    """A training loop stepping every ``STEP_S`` through a Monitor, in a thread, recording when it sent what."""

    run_id: str
    values: Callable[[int], dict[str, Any]]
    max_steps: int
    sent: dict[int, float] = field(default_factory=dict)
    nonfinite_sent: list[int] = field(default_factory=list)
    halt: Halt | None = None
    halted_at: float | None = None
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self, url: str, token: str) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(url, token), name=self.run_id, daemon=True)
        thread.start()
        return thread

    def _run(self, url: str, token: str) -> None:
        try:
            with Monitor(
                url, self.run_id, token=token, halt_on="never", team=TEAM, framework="chain-test",
                dtype_policy="mixed_float16", layers=LAYERS,
            ) as monitor:  # fmt: skip
                self._steps(monitor)
        except BaseException as exc:  # reported by the test's thread
            self.error = exc

    def _steps(self, monitor: Monitor) -> None:
        start = time.monotonic()
        for step in range(self.max_steps):
            if self.stop.is_set():
                return
            values = self.values(step)
            self.sent[step] = time.time()
            if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
                self.nonfinite_sent.append(step)
            halt = monitor.log_step(step, **values)
            if halt is not None:
                self.halt, self.halted_at = halt, time.time()
                return
            self.stop.wait(max(0.0, start + STEP_S * (step + 1) - time.monotonic()))


@dataclass
class Chain:
    """The running stack."""

    service: ServiceProcess
    prometheus: Daemon
    alertmanager: Daemon
    api: PrometheusApi
    writer_token: str


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    """nanwatch, Alertmanager and Prometheus on loopback; all three stopped after the test."""
    tokens = tmp_path / "tokens.toml"
    shutil.copy(ROOT / "deploy" / "nanwatch" / "tokens.toml", tokens)
    writer_token = add_token(tokens, name="chain-jobs", team=TEAM, role="writer")
    service = ServiceProcess(tmp_path / "nanwatch.db", extra_env={"NANWATCH_TOKENS_FILE": str(tokens)})
    am = alertmanager(tmp_path, service.port)
    prom = prometheus(tmp_path, service.port, am.port)
    api = PrometheusApi(prom.url)
    try:
        service.start()
        am.start()
        prom.start()
        wait_until(lambda: api.query('up{job="nanwatch"} == 1'), timeout=60, what="Prometheus scraping nanwatch")
        yield Chain(service, prom, am, api, writer_token)
    finally:
        api.close()
        prom.stop()
        am.stop()
        service.stop()


def test_the_chain_halts_a_diverging_job_before_its_first_nonfinite_value(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.time()
    job = Job("chain-diverging", diverging, FIRST_NONFINITE_STEP + 10)
    calm = Job("chain-healthy", healthy(random.Random(15)), 100_000)
    threads = [job.start(chain.service.url, chain.writer_token), calm.start(chain.service.url, chain.writer_token)]
    threads[0].join(timeout=(FIRST_NONFINITE_STEP + 10) * STEP_S + 60)
    try:
        assert not threads[0].is_alive(), "the diverging job neither finished nor stopped"
        assert job.error is None and calm.error is None, job.error or calm.error
        assert job.halt is not None, f"the diverging job was never halted; non-finite from step {job.nonfinite_sent[0]}"
        halted = f'nanwatch_run_halted{{run_id="{job.run_id}"}} == 1'
        wait_until(lambda: chain.api.query(halted), timeout=30, what="Prometheus to see the halt acknowledged")
    finally:
        calm.stop.set()
        threads[1].join(timeout=30)
    ended = time.time()

    headers = {"Authorization": f"Bearer {chain.writer_token}"}
    with httpx.Client(base_url=chain.service.url, headers=headers, timeout=30) as client:
        run = client.get(f"/v1/runs/{job.run_id}").json()
        calm_run = client.get(f"/v1/runs/{calm.run_id}").json()
        events = client.get(f"/v1/runs/{job.run_id}/events", params={"detector": "alertmanager"}).json()["events"]
    firing = [e for e in events if e["alert"]["status"] == "firing"]
    assert firing, f"the webhook recorded no firing alert for {job.run_id}: {run}"
    with capsys.disabled():
        print(_hop_table(chain.api, job, firing[0], ended))

    assert job.halt.source == "alertmanager", job.halt
    assert job.halt.step < FIRST_NONFINITE_STEP and not job.nonfinite_sent, (job.halt, job.nonfinite_sent)
    assert run["status"] == "halted" and run["halt"]["acked_step"] == job.halt.step
    assert run["halt"]["sent_by"] == "alertmanager"  # the webhook's entry in the shipped tokens file
    assert calm.halt is None and calm_run["halt"] is None
    assert chain.api.query(f'ALERTS{{run_id="{calm.run_id}"}}[1h]', at=ended) == [], "an alert fired on the healthy run"
    _check_links(chain.service.url, alert=firing[0]["alert"], run_id=job.run_id, headers=headers)
    empty = _empty_queries(chain.api, {"team": TEAM, "run_id": job.run_id}, started, ended)
    assert not empty, "queries that returned no data:\n" + "\n".join(empty)


def _hop_table(api: PrometheusApi, job: Job, event: dict[str, Any], ended: float) -> str:
    alert = event["alert"]
    labels = f'alertname="{alert["name"]}",run_id="{job.run_id}"'
    firing = _raw(api, f'ALERTS{{{labels},alertstate="firing"}}[1h]', ended)
    pending = _raw(api, f'ALERTS{{{labels},alertstate="pending"}}[1h]', ended)
    firing_at = firing[0][0]
    scraped_at, step = [(t, v) for t, v in _raw(api, f'nanwatch_run_step{{run_id="{job.run_id}"}}[1h]', ended)
                        if t <= firing_at][-1]  # fmt: skip
    assert job.halt is not None and job.halted_at is not None
    hops = [
        (f"record sent (step {int(step)})", job.sent[int(step)]),
        (f"sample scraped (step {int(step)})", scraped_at),
        ("alert pending" if pending else "alert pending (none: for 0s fires at once)", (pending or firing)[0][0]),
        (f"alert firing ({alert['name']})", firing_at),
        ("notification received by the webhook", alert["received_at"]),
        (f"halt delivered to the job (step {job.halt.step})", job.halted_at),
    ]
    lines = [f"\nhalt chain for run {job.run_id} (first non-finite value due at step {FIRST_NONFINITE_STEP}):"]
    previous = hops[0][1]
    for what, at in hops:
        clock = datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]
        lines.append(f"  {what:<45} {clock}  +{at - previous:5.2f} s")
        previous = at
    lines.append(f"  {'record sent → halt delivered':<45} {'':12}  {hops[-1][1] - hops[0][1]:6.2f} s")
    lines.append(f"  halted {FIRST_NONFINITE_STEP - job.halt.step} steps before the first non-finite value")
    return "\n".join(lines)


def _raw(api: PrometheusApi, expr: str, at: float) -> list[tuple[float, float]]:
    result = api.query(expr, at=at)
    assert len(result) <= 1, f"{expr}: {result}"
    return [(float(t), float(v)) for row in result for t, v in row["values"]]


def _check_links(service_url: str, alert: dict[str, Any], run_id: str, headers: dict[str, str]) -> None:
    """The alert's links open the run dashboard and, host aside, the run's REST page."""
    annotations = alert["annotations"]
    assert "/d/nanwatch-run/" in annotations["dashboard"] and f"var-run_id={run_id}" in annotations["dashboard"]
    path = "/" + annotations["run"].split("/", 3)[3]
    page = httpx.get(service_url + path, headers=headers, timeout=30)
    assert page.status_code == 200 and page.json()["run_id"] == run_id, annotations["run"]
    uids = {json.loads(path.read_text())["uid"] for path in DASHBOARDS}
    assert "nanwatch-run" in uids


def _empty_queries(api: PrometheusApi, variables: dict[str, str], start: float, end: float) -> list[str]:
    """Every rule signal and selector and every dashboard query that returns nothing over [start, end]."""
    queries = []
    for group in yaml.safe_load((PROM_DIR / "rules" / "nanwatch.yml").read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            queries += [(f"rule {name} signal", signal(rule["expr"]))]
            queries += [(f"rule {name} selector", s) for s in sorted(selectors(rule["expr"]))]
    grafana = {**variables, "__rate_interval": "8s", "__interval": "2s", "__range": f"{int(end - start)}s"}
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        queries += [(f"{path.name} {where}", substitute(expr, grafana)) for where, expr in dashboard_queries(dash)]
    # Grafana evaluates a range query at start, start + step, ...: end a step past now, so that the
    # last evaluation comes after the last scrape (the halt's).
    empty = [f"{where}: {expr}" for where, expr in queries if not api.query_range(expr, start, end + 2, 2)]
    for path in DASHBOARDS:
        for var, match, label in variable_queries(json.loads(path.read_text())):
            if variables[var] not in api.label_values(label, substitute(match, grafana), start, end):
                empty.append(f"{path.name} variable {var}: label_values({match}, {label}) lacks {variables[var]}")
    return empty
