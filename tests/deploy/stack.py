"""Prometheus and Alertmanager run from the shipped configuration on free loopback ports, and a small client
of Prometheus' HTTP API, for the chain test.

The shipped files are used as they are; only hosts and ports are rewritten (``rewrite_hosts`` proves it:
the rewrite must be reversible). The binaries come from Debian's ``prometheus`` and
``prometheus-alertmanager`` packages (``make tools``); a missing one fails the test, it never skips it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ChildProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
AM_DIR = ROOT / "deploy" / "alertmanager"
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager (or `make tools`)"


def binary(*names: str) -> str:
    """The first of ``names`` found on PATH (Debian calls Alertmanager ``prometheus-alertmanager``)."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(f"none of {names} found on PATH: install with `{INSTALL_HINT}`", pytrace=False)


def rewrite_hosts(text: str, hosts: Mapping[str, str]) -> str:
    """``text`` with each ``host:port`` of ``hosts`` replaced, and nothing else changed."""
    rewritten = text
    for old, new in hosts.items():
        assert old in text, f"{old!r} not found in the shipped configuration"
        rewritten = rewritten.replace(old, new)
    restored = rewritten
    for old, new in hosts.items():
        restored = restored.replace(new, old)
    assert restored == text, "the rewrite changed more than hosts and ports"
    return rewritten


class Daemon(ChildProcess):
    """Prometheus or Alertmanager in a child process; ready once ``/-/ready`` answers."""

    def __init__(self, name: str, args: list[str], port: int, log: Path) -> None:
        self.args, self.port = args, port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(name, f"{self.url}/-/ready", log)

    def start(self) -> Daemon:
        self.start_process(self.args)
        return self


def prometheus(tmp: Path, nanwatch_port: int, alertmanager_port: int) -> Daemon:
    """Prometheus with deploy/prometheus/prometheus.yml and its rule files, targets on loopback."""
    port = free_port()
    config_dir = tmp / "prometheus"
    shutil.copytree(PROM_DIR / "rules", config_dir / "rules")
    hosts = {
        "nanwatch:8000": f"127.0.0.1:{nanwatch_port}",
        "alertmanager:9093": f"127.0.0.1:{alertmanager_port}",
        "localhost:9090": f"127.0.0.1:{port}",
    }
    config = config_dir / "prometheus.yml"
    config.write_text(rewrite_hosts((PROM_DIR / "prometheus.yml").read_text(), hosts))
    args = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return Daemon("prometheus", args, port, tmp / "prometheus.log")


def alertmanager(tmp: Path, nanwatch_port: int) -> Daemon:
    """Alertmanager with deploy/alertmanager/alertmanager.yml (and its token file), the webhook on loopback."""
    port = free_port()
    config_dir = tmp / "alertmanager"
    config_dir.mkdir()
    shutil.copy(AM_DIR / "nanwatch-webhook-token", config_dir)
    config = config_dir / "alertmanager.yml"
    hosts = {"http://nanwatch:8000/": f"http://127.0.0.1:{nanwatch_port}/"}
    config.write_text(rewrite_hosts((AM_DIR / "alertmanager.yml").read_text(), hosts))
    args = [
        binary("alertmanager", "prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={tmp / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no HA gossip: it would listen on every interface
    ]
    return Daemon("alertmanager", args, port, tmp / "alertmanager.log")


class PrometheusApi:
    """The few calls of Prometheus' HTTP API the chain test makes."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=f"{url}/api/v1", timeout=30)

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query (raw samples for a range selector ``x[5m]``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        result: list[dict[str, Any]] = self._get("/query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query, as Grafana runs a panel's target."""
        result: list[dict[str, Any]] = self._get("/query_range", query=expr, start=start, end=end, step=step)["result"]
        return result

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        """What Grafana's ``label_values(match, label)`` lists over the time range."""
        values: list[str] = self._get(f"/label/{label}/values", **{"match[]": match, "start": start, "end": end})
        return values

    def close(self) -> None:
        self.client.close()
