"""Validation of the deployment configuration under deploy/ and docker-compose.yml.

Prometheus and Alertmanager files are checked with the real tools (promtool, amtool), including unit
tests of the alert rules (deploy/prometheus/rules/nanwatch_test.yml). The tools come from Debian/Ubuntu:

    apt-get install prometheus prometheus-alertmanager

A missing tool fails these tests (CI installs them); it never skips them.
The YAML files are parsed with PyYAML (the dev extra must provide it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules" / "nanwatch.yml"
RULES_TEST = PROM_DIR / "rules" / "nanwatch_test.yml"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "nanwatch.json"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "nanwatch.yml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"

INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"

# The metric names of the design (DESIGN.md, "Metrics"). A histogram is queried through its series.
RUN_METRICS = {
    "nanwatch_run_loss",
    "nanwatch_run_grad_norm",
    "nanwatch_run_step",
    "nanwatch_run_health",
    "nanwatch_run_halted",
    "nanwatch_run_steps_to_nonfinite",
    "nanwatch_events_total",
}
SERVICE_METRICS = {
    "nanwatch_ingest_records_total",
    "nanwatch_active_runs",
    "nanwatch_halts_total",
}
HISTOGRAMS = {"nanwatch_ingest_request_duration_seconds"}
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


_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels left out)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", s):
        name, is_call = m.group(1), m.group(2)
        if is_call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def _alert_rules() -> list[dict[str, Any]]:
    doc = _load_yaml(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panel_targets(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for panel in dash["panels"]:
        for sub in [panel, *panel.get("panels", [])]:  # rows may nest panels
            for target in sub.get("targets", []):
                found.append((sub["title"], target))
    return found


_GRAFANA_VARS = {"run_id": ".*", "__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def _substitute_grafana_vars(expr: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in _GRAFANA_VARS, f"unknown Grafana variable ${name} in {expr!r}"
        return _GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


# ---------------------------------------------------------------------------------------- prometheus


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x", le=~"1|2"}[$__rate_interval])))'
        " > 1 unless on (run_id) max without (instance) (b offset 10m) or vector(0) and c != c"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names("abs(nanwatch_run_loss) == Inf") == {"nanwatch_run_loss"}


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
    assert nanwatch["scrape_interval"] == "5s"
    assert nanwatch.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in nanwatch["static_configs"] for t in sc["targets"]] == ["nanwatch:8000"]
    am_targets = [t for am in cfg["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert am_targets == ["alertmanager:9093"]


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool")
    out = _run([promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES)])
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out, out


def test_promtool_unit_tests_of_alert_rules() -> None:
    promtool = _tool("promtool")
    out = _run([promtool, "test", "rules", str(RULES_TEST)], cwd=RULES_TEST.parent)
    assert "SUCCESS" in out, out
    # The unit tests must exercise every alert, firing at least once.
    doc = _load_yaml(RULES_TEST)
    fired = {case["alertname"] for test in doc["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert fired == EXPECTED_ALERTS


def test_alert_rules_contract() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(rules) == EXPECTED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name} lacks annotation {key}"
        if name.startswith("NanwatchRun") or name.startswith("NanwatchNonfinite"):
            assert "$labels.run_id" in rule["annotations"]["summary"], f"{name}'s summary must name the run"
        unknown = metric_names(rule["expr"]) - DESIGN_METRICS - {"up"}
        assert not unknown, f"{name} uses metrics outside the design: {sorted(unknown)}"

    critical = rules["NanwatchRunCritical"]
    assert critical["labels"]["severity"] == "critical"
    assert critical.get("for", "0m") in {"0m", "0s"}
    assert "nanwatch_run_health" in critical["expr"]
    assert rules["NanwatchRunWarning"]["for"] == "2m"
    # NaN compares false with everything in PromQL: the rule must use x != x.
    assert "nanwatch_run_loss != nanwatch_run_loss" in rules["NanwatchNonfiniteLoss"]["expr"]
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
    assert hook["send_resolved"] is False
    (halt_route,) = [r for r in cfg["route"]["routes"] if r["receiver"] == "nanwatch-halt"]
    assert halt_route["group_by"] == ["run_id"]
    assert halt_route["group_wait"] in {"0s", "1s", "2s", "5s"}


# ------------------------------------------------------------------------------------------- grafana


def test_dashboard_structure() -> None:
    dash = _dashboard()
    assert 38 <= dash["schemaVersion"] <= 41
    assert dash["uid"] == "nanwatch"
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "run_id"]
    assert var["type"] == "query"
    assert var["definition"] == "label_values(nanwatch_run_step, run_id)"
    assert var["query"]["query"] == "label_values(nanwatch_run_step, run_id)"

    panels = {p["title"]: p for p in dash["panels"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]

    def panel(word: str) -> dict[str, Any]:
        matches = [p for title, p in panels.items() if word.lower() in title.lower()]
        assert matches, f"no panel titled with {word!r}: {sorted(panels)}"
        return matches[0]

    for word in ("loss", "gradient norm"):
        scale = panel(word)["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]
        assert scale["type"] == "log", f"{word} panel must use a log scale"

    # Each required view, identified by the metric its queries read.
    required = (RUN_METRICS - {"nanwatch_run_step", "nanwatch_run_halted"}) | SERVICE_METRICS
    required |= {"nanwatch_ingest_request_duration_seconds_bucket"}
    used = set().union(*(metric_names(t["expr"]) for _, t in _panel_targets(dash)))
    assert required <= used, f"missing panels for {sorted(required - used)}"
    assert "detector" in panel("events")["targets"][0]["expr"]


def test_dashboard_queries_use_only_design_metrics() -> None:
    targets = _panel_targets(_dashboard())
    assert targets
    for title, target in targets:
        names = metric_names(target["expr"])
        assert names, f"panel {title!r}: no metric in {target['expr']!r}"
        unknown = names - DESIGN_METRICS
        assert not unknown, f"panel {title!r} queries metrics outside the design: {sorted(unknown)}"
        if names & RUN_METRICS:
            assert "$run_id" in target["expr"], f"panel {title!r} ignores the run_id variable"


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Every dashboard expression, with Grafana's variables filled in, is valid PromQL for promtool."""
    promtool = _tool("promtool")
    dash = _dashboard()
    exprs = [target["expr"] for _, target in _panel_targets(dash)]
    exprs += [v["definition"].removeprefix("label_values(").rsplit(",", 1)[0] for v in dash["templating"]["list"]]
    rules = [
        {"record": f"nanwatch:dashboard_query_{i}", "expr": _substitute_grafana_vars(e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    out = _run([promtool, "check", "rules", str(path)])
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_grafana_provisioning() -> None:
    ds = _load_yaml(GRAFANA_DATASOURCES)
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for _, t in _panel_targets(_dashboard())}
    assert uids == {prom["uid"]}, "the dashboard must use the provisioned datasource's uid"

    provider = _load_yaml(GRAFANA_DASHBOARD_PROVIDER)["providers"][0]
    mounts = _load_yaml(COMPOSE)["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


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
