"""Validation of the deployment configuration under deploy/ and docker-compose.yml.

Prometheus and Alertmanager files are checked with the real tools (promtool, amtool), including unit
tests of the alert rules (deploy/prometheus/rules/nanwatch_test.yml). The tools come from Debian/Ubuntu:

    apt-get install prometheus prometheus-alertmanager

A missing tool fails these tests (CI installs them); it never skips them.
The YAML files are parsed with PyYAML (the dev extra must provide it). That every query returns data
against a live Prometheus is tests/deploy/test_chain.py's part.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nanwatch_service.auth import Role, TokenBook
from tests.deploy.promql import dashboard_queries, metric_names, selectors, signal, substitute, variable_queries

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules" / "nanwatch.yml"
RULES_TEST = PROM_DIR / "rules" / "nanwatch_test.yml"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
FLEET = DASHBOARDS / "fleet.json"
RUN = DASHBOARDS / "run.json"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "nanwatch.yml"
COMPOSE = ROOT / "docker-compose.yml"
TOKENS_FILE = ROOT / "deploy" / "nanwatch" / "tokens.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"

INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"

# The metric names of the design (DESIGN.md, "Metrics", and issue 15's additions). A histogram is
# queried through its series.
RUN_METRICS = {
    "nanwatch_run_loss",
    "nanwatch_run_grad_norm",
    "nanwatch_run_step",
    "nanwatch_run_health",
    "nanwatch_run_halted",
    "nanwatch_run_steps_to_nonfinite",
    "nanwatch_run_loss_scale",
    "nanwatch_run_layer_grad_norm",
    "nanwatch_run_act_max_abs",
    "nanwatch_run_act_dtype_max",
    "nanwatch_run_overflow_headroom",
    "nanwatch_events_total",
}
SERVICE_METRICS = {
    "nanwatch_ingest_records_total",
    "nanwatch_active_runs",
    "nanwatch_halts_total",
}
HISTOGRAMS = {"nanwatch_ingest_request_duration_seconds", "nanwatch_store_commit_duration_seconds"}
PROMETHEUS_OWN = {"up", "ALERTS"}
DESIGN_METRICS = (
    RUN_METRICS | SERVICE_METRICS | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

EXPECTED_ALERTS = {
    "NanwatchRunCritical",
    "NanwatchRunWarning",
    "NanwatchNonfiniteForecast",
    "NanwatchNonfiniteLoss",
    "NanwatchRunStalled",
    "NanwatchIngestDown",
    "NanwatchIngestSlow",
}
HALTING_ALERTS = {"NanwatchRunCritical", "NanwatchNonfiniteForecast", "NanwatchNonfiniteLoss"}


# --------------------------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install it with `{INSTALL_HINT}`", pytrace=False)
    return path


def _run(args: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out}"
    return out


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is not installed: add `pyyaml` to the dev extra of pyproject.toml", pytrace=False)
    return yaml


def _load_yaml(path: Path) -> Any:
    return _yaml().safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    doc = _load_yaml(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _dashboard(path: Path) -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(path.read_text())
    return dash


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [sub for panel in dash["panels"] for sub in [panel, *panel.get("panels", [])]]


# Grafana's variables as a test fills them in: any team and run, the intervals at a 2s scrape.
_GRAFANA_VARS = {"team": ".*", "run_id": ".*", "__rate_interval": "8s", "__interval": "2s", "__range": "1h"}


# ---------------------------------------------------------------------------------------- prometheus


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x", le=~"1|2"}[$__rate_interval])))'
        " > 1 unless on (run_id) max without (instance) (b offset 10m) or vector(0) and c != c"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert selectors(expr) == {'a_bucket{job="x", le=~"1|2"}', "b", "c"}
    assert signal(expr) == expr[: expr.index(" > 1 unless")]
    assert metric_names("abs(nanwatch_run_loss) == Inf") == {"nanwatch_run_loss"}
    assert signal('max by (run_id) (x{a=~"b>c"} > 0) / y != 0') == 'max by (run_id) (x{a=~"b>c"} > 0) / y'
    with pytest.raises(ValueError, match="no top-level comparison"):
        signal("(x == 1)")


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    # promtool resolves rule_files relative to the config file's directory, as Prometheus does in the
    # container (/etc/prometheus); run from elsewhere to prove the paths do not depend on the cwd.
    out = _run([promtool, "check", "config", "--lint=all", "--lint-fatal", str(PROM_CONFIG)], cwd=tmp_path)
    assert "SUCCESS" in out
    assert str(RULES) in out, f"promtool did not load {RULES}:\n{out}"
    assert "nanwatch_test.yml" not in out


def test_prometheus_config_contents() -> None:
    cfg = _load_yaml(PROM_CONFIG)
    for entry in cfg["rule_files"]:
        assert not Path(entry).is_absolute(), f"rule_files entry {entry!r} must be relative to prometheus.yml"
    assert (PROM_DIR / cfg["rule_files"][0]).resolve() == RULES
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    nanwatch = jobs["nanwatch"]
    # The halt chain's first two hops: a run's state reaches an alert within 2s + 2s.
    assert nanwatch["scrape_interval"] == "2s"
    (runs,) = [g for g in _load_yaml(RULES)["groups"] if g["name"] == "nanwatch-runs"]
    assert runs["interval"] == nanwatch["scrape_interval"]
    assert {r["alert"] for r in runs["rules"]} >= HALTING_ALERTS
    assert nanwatch.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in nanwatch["static_configs"] for t in sc["targets"]] == ["nanwatch:8000"]
    am_targets = [t for am in cfg["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert am_targets == ["alertmanager:9093"]
    grafana = _load_yaml(GRAFANA_DATASOURCES)["datasources"][0]
    assert grafana["jsonData"]["timeInterval"] == nanwatch["scrape_interval"], "Grafana's $__rate_interval uses it"


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool")
    out = _run([promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES)])
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out, out


def test_promtool_unit_tests_fire_and_stay_quiet_for_every_alert() -> None:
    promtool = _tool("promtool")
    out = _run([promtool, "test", "rules", str(RULES_TEST)], cwd=RULES_TEST.parent)
    assert "SUCCESS" in out, out
    cases = [case for test in _load_yaml(RULES_TEST)["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fired == EXPECTED_ALERTS, f"alerts never tested firing: {sorted(EXPECTED_ALERTS - fired)}"
    assert quiet == EXPECTED_ALERTS, f"alerts never tested quiet: {sorted(EXPECTED_ALERTS - quiet)}"


def test_alert_rules_contract() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(rules) == EXPECTED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name} lacks annotation {key}"
        signal(rule["expr"])  # SIGNAL <comparison> THRESHOLD: the chain test runs the signal
        unknown = metric_names(rule["expr"]) - DESIGN_METRICS - PROMETHEUS_OWN
        assert not unknown, f"{name} uses metrics outside the design: {sorted(unknown)}"
        if name.startswith(("NanwatchRun", "NanwatchNonfinite")):
            assert "$labels.run_id" in rule["annotations"]["summary"], f"{name}'s summary must name the run"
            assert "by (run_id, team)" in rule["expr"], f"{name} must carry exactly run_id and team"
            dashboard = rule["annotations"]["dashboard"]
            assert "/d/nanwatch-run/" in dashboard and "var-run_id={{ $labels.run_id }}" in dashboard
            assert rule["annotations"]["run"].endswith("/v1/runs/{{ $labels.run_id }}")
    critical = {name for name, rule in rules.items() if rule["labels"]["severity"] == "critical"}
    halting = {name for name in critical if "run_id" in rules[name]["expr"]}
    assert halting == HALTING_ALERTS
    for name in HALTING_ALERTS:
        assert rules[name].get("for", "0m") in {"0m", "0s"}, f"{name} must act at its first evaluation"
        assert "unless on (run_id) (nanwatch_run_halted == 1)" in rules[name]["expr"]

    forecast = rules["NanwatchNonfiniteForecast"]["expr"]
    assert "nanwatch_run_steps_to_nonfinite" in forecast and "deriv(nanwatch_run_step[1m]) > 0" in forecast
    assert "nanwatch_run_health) >= 1" in forecast
    assert "nanwatch_run_health" in rules["NanwatchRunCritical"]["expr"]
    assert rules["NanwatchRunWarning"]["for"] == "2m"
    # NaN compares false with everything in PromQL: x * 0 != 0 is true exactly for NaN and ±Inf.
    assert "(nanwatch_run_loss * 0) != 0" in rules["NanwatchNonfiniteLoss"]["expr"]
    assert "(changes(nanwatch_run_step[10m])) == 0" in rules["NanwatchRunStalled"]["expr"]
    assert "nanwatch_run_halted" in rules["NanwatchRunStalled"]["expr"]
    assert rules["NanwatchIngestDown"]["expr"].strip() == 'up{job="nanwatch"} == 0'
    assert "histogram_quantile(0.99" in rules["NanwatchIngestSlow"]["expr"]


# -------------------------------------------------------------------------------------- alertmanager


def test_amtool_check_config() -> None:
    amtool = _tool("amtool")
    out = _run([amtool, "check-config", str(AM_CONFIG)])
    assert "SUCCESS" in out, out


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=NanwatchRunCritical", "severity=critical", "run_id=resnet-lr3e-4", "team=vision"],
         "nanwatch-halt"),
        (["alertname=NanwatchNonfiniteForecast", "severity=critical", "run_id=r1", "team=nlp"], "nanwatch-halt"),
        (["alertname=NanwatchNonfiniteLoss", "severity=critical", "run_id=r1", "team=nlp"], "nanwatch-halt"),
        (["alertname=NanwatchRunWarning", "severity=warning", "run_id=r1", "team=nlp"], "null"),
        (["alertname=NanwatchIngestDown", "severity=critical", "job=nanwatch"], "null"),
        (["alertname=NanwatchIngestSlow", "severity=warning"], "null"),
    ],
)  # fmt: skip
def test_alertmanager_routes(labels: list[str], receiver: str) -> None:
    amtool = _tool("amtool")
    args = ["config", "routes", "test", f"--config.file={AM_CONFIG}", f"--verify.receivers={receiver}"]
    out = _run([amtool, *args, *labels])
    assert receiver in out


def test_alertmanager_webhook_receiver() -> None:
    cfg = _load_yaml(AM_CONFIG)
    assert cfg["route"]["receiver"] == "null"
    assert cfg["route"]["group_by"] == ["run_id"]
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert set(receivers["null"]) == {"name"}, "the default receiver must deliver nowhere"
    (hook,) = receivers["nanwatch-halt"]["webhook_configs"]
    assert hook["url"] == "http://nanwatch:8000/v1/alertmanager"
    assert hook["send_resolved"] is True, "resolved alerts are recorded as events of the run"
    (halt_route,) = [r for r in cfg["route"]["routes"] if r["receiver"] == "nanwatch-halt"]
    assert halt_route["group_by"] == ["run_id"]
    assert halt_route["group_wait"] == "0s"


def test_the_webhook_token_is_a_credentials_file_whose_hash_is_an_operator_of_every_team() -> None:
    (hook,) = {r["name"]: r for r in _load_yaml(AM_CONFIG)["receivers"]}["nanwatch-halt"]["webhook_configs"]
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and "credentials" not in auth
    path = Path(auth["credentials_file"])
    assert not path.is_absolute(), "relative to alertmanager.yml, so the same file works mounted and in the tests"
    token = (AM_CONFIG.parent / path).read_text().strip()
    caller = TokenBook(TOKENS_FILE).resolve(token)
    assert caller is not None and caller.name == "alertmanager"
    assert caller.team == "*" and caller.role == Role.OPERATOR


def test_compose_and_kubernetes_serve_with_the_tokens_file() -> None:
    nanwatch = _load_yaml(COMPOSE)["services"]["nanwatch"]
    path = nanwatch["environment"]["NANWATCH_TOKENS_FILE"]
    assert f"./deploy/nanwatch:{Path(path).parent}:ro" in nanwatch["volumes"]
    assert (ROOT / "deploy" / "nanwatch" / Path(path).name).is_file()
    assert not {"NANWATCH_TOKEN", "NANWATCH_WEBHOOK_TOKEN", "NANWATCH_ALLOW_ANONYMOUS"} & set(nanwatch["environment"])
    pod = _k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [tokens] = [name for name, m in mounts.items() if m["mountPath"] == str(Path(env["NANWATCH_TOKENS_FILE"]).parent)]
    assert "subPath" not in mounts[tokens], "a subPath mount never sees the Secret change"
    assert volumes[tokens]["secret"]["secretName"] == "nanwatch-tokens"


# ------------------------------------------------------------------------------------------- grafana


def test_two_dashboards_with_fixed_uids() -> None:
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == ["fleet.json", "run.json"]
    for path, uid in ((FLEET, "nanwatch-fleet"), (RUN, "nanwatch-run")):
        dash = _dashboard(path)
        assert dash["uid"] == uid and 38 <= dash["schemaVersion"] <= 41
        ids = [p["id"] for p in _panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids must be unique"
        for p in _panels(dash):
            assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        team = {v["name"]: v for v in dash["templating"]["list"]}["team"]
        assert team["definition"] == team["query"]["query"] == "label_values(nanwatch_run_step, team)"


def test_the_run_dashboard_shows_each_view_of_one_run() -> None:
    dash = _dashboard(RUN)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["run_id"]["definition"] == 'label_values(nanwatch_run_step{team=~"$team"}, run_id)'
    assert variables["run_id"]["multi"] is False
    titles = {p["title"].lower(): p for p in _panels(dash)}

    def panel(words: str) -> dict[str, Any]:
        matches = [p for title, p in titles.items() if words in title]
        assert matches, f"no panel titled with {words!r}: {sorted(titles)}"
        return matches[0]

    for words in ("loss (log", "gradient norm", "activation", "headroom"):
        assert panel(words)["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]["type"] == "log", words
    assert any("layer_grad_norm" in t["expr"] for t in panel("gradient norm")["targets"])
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dash)))
    required = RUN_METRICS - {"nanwatch_events_total"} | {"nanwatch_events_total", "ALERTS"}
    assert required <= used, f"missing views of {sorted(required - used)}"
    annotations = {a["name"]: a["expr"] for a in dash["annotations"]["list"] if "expr" in a}
    assert set(annotations) == {"Alerts", "Events", "Halt"}
    assert "nanwatch_run_halted" in annotations["Halt"] and "nanwatch_events_total" in annotations["Events"]
    links = {link["title"]: link["url"] for link in dash["links"]}
    assert links["Fleet"].startswith("/d/nanwatch-fleet/")
    assert links["This run (REST)"].endswith("/v1/runs/${run_id}")


def test_the_fleet_dashboard_rows_open_the_run_dashboard() -> None:
    dash = _dashboard(FLEET)
    titles = [p["title"] for p in _panels(dash)]
    for words in ("health per team", "halts by source", "events by detector", "closest to a non-finite",
                  "ingest rate", "request latency", "store latency", "replicas up"):  # fmt: skip
        assert any(words in t.lower() for t in titles), f"no fleet panel about {words!r}: {titles}"
    tables = [p for p in _panels(dash) if p["type"] == "table"]
    assert len(tables) == 2
    for table in tables:
        (link,) = [
            prop["value"][0]
            for override in table["fieldConfig"]["overrides"]
            if override["matcher"]["options"] == "run_id"
            for prop in override["properties"]
            if prop["id"] == "links"
        ]
        assert link["url"].startswith("/d/nanwatch-run/") and "var-run_id=${__data.fields.run_id}" in link["url"]
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dash)))
    assert SERVICE_METRICS | {f"{h}_bucket" for h in HISTOGRAMS} | {"up"} <= used
    (closest,) = [p for p in tables if "closest" in p["title"].lower()]
    assert all("< +Inf" in t["expr"] for t in closest["targets"]), "+Inf (no forecast) must not sort first"


@pytest.mark.parametrize("path", [FLEET, RUN], ids=["fleet", "run"])
def test_dashboard_queries_use_the_design_metrics_and_variables(path: Path) -> None:
    dash = _dashboard(path)
    for where, expr in dashboard_queries(dash):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - DESIGN_METRICS - PROMETHEUS_OWN
        assert not unknown, f"{where} queries metrics outside the design: {sorted(unknown)}"
        if names & RUN_METRICS:
            assert "$run_id" in expr or "$team" in expr, f"{where} ignores the team and run_id variables"
        for target in [t for p in _panels(dash) for t in p.get("targets", [])]:
            assert target["datasource"]["uid"] == "prometheus", "the provisioned datasource's uid"


@pytest.mark.parametrize("path", [FLEET, RUN], ids=["fleet", "run"])
def test_dashboard_queries_parse_with_promtool(path: Path, tmp_path: Path) -> None:
    """Every dashboard expression, with Grafana's variables filled in, is valid PromQL for promtool."""
    promtool = _tool("promtool")
    dash = _dashboard(path)
    exprs = [expr for _, expr in dashboard_queries(dash)] + [match for _, match, _ in variable_queries(dash)]
    rules = [
        {"record": f"nanwatch:dashboard_query_{i}", "expr": substitute(e, _GRAFANA_VARS)} for i, e in enumerate(exprs)
    ]
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    out = _run([promtool, "check", "rules", str(rules_file)])
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_grafana_provisioning() -> None:
    ds = _load_yaml(GRAFANA_DATASOURCES)
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["uid"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    provider = _load_yaml(GRAFANA_DASHBOARD_PROVIDER)["providers"][0]
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/fleet.json"


# -------------------------------------------------------------------------------------------- compose


def test_docker_compose() -> None:
    compose = _load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) >= {"nanwatch", "postgres", "prometheus", "alertmanager", "grafana"}

    nanwatch = services["nanwatch"]
    assert nanwatch["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert (ROOT / nanwatch["build"]["dockerfile"]).is_file()
    assert nanwatch["environment"]["NANWATCH_DATABASE_URL"] == ("postgresql://nanwatch:nanwatch@postgres:5432/nanwatch")
    assert nanwatch["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["postgres"]["environment"] == {
        "POSTGRES_USER": "nanwatch", "POSTGRES_PASSWORD": "nanwatch", "POSTGRES_DB": "nanwatch",
    }  # fmt: skip

    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"
    for name in ("prometheus", "grafana"):
        assert services[name].get("depends_on"), f"{name} has no depends_on"

    grafana = services["grafana"]
    assert "3000:3000" in grafana["ports"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in services["alertmanager"]["command"]


# --------------------------------------------------------------------------------------- image and k8s


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert '".[service,postgres]"' in text
    assert "tensorflow" not in text and "keras" not in "".join(lines)
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1] not in {"root", "0"}
    assert "EXPOSE 8000" in lines
    assert "ENV NANWATCH_DB=/data/nanwatch.db" in lines
    assert any(line.startswith("VOLUME") and "/data" in line for line in lines)
    health = text[text.index("HEALTHCHECK") :]
    assert "/healthz" in health.split('CMD ["nanwatch"')[0]
    assert lines[-1] == 'CMD ["nanwatch", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                if not src.endswith("*"):
                    assert (ROOT / src).exists(), f"COPY source {src} missing from the repository"


def _k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml().safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests() -> None:
    docs = _k8s_docs()
    deployment, service = docs["Deployment"], docs["Service"]
    assert "ServiceMonitor" not in docs
    assert deployment["spec"]["replicas"] == 2
    assert "SQLite" in (K8S / "deployment.yaml").read_text(), "say why replicas need PostgreSQL"

    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"

    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["NANWATCH_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert [p["containerPort"] for p in container["ports"]] == [8000]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8000
    assert service["metadata"]["name"] == "nanwatch"  # http://nanwatch:8000 in the Alertmanager webhook
