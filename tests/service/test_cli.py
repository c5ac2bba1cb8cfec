"""The ``nanwatch`` command against a real service process."""

from __future__ import annotations

import math
import subprocess
import sys

import httpx

from tests.conftest import ServiceProcess
from tests.service.helpers import post_steps, record, register, reply


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanwatch_service.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_serve_answers_healthz_and_readyz_on_sqlite(service_process: ServiceProcess) -> None:
    assert httpx.get(f"{service_process.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service_process.url}/readyz").status_code == 200
    assert httpx.get(f"{service_process.url}/docs").status_code == 200
    assert service_process.db.exists()


def test_runs_and_events_commands_show_the_findings(service_process: ServiceProcess) -> None:
    with httpx.Client(base_url=service_process.url) as client:
        register(client, "cli-run", team="nlp")
        reply(post_steps(client, "cli-run", [record(0, loss=math.inf)]))
    runs = _cli("runs", "--url", service_process.url)
    assert runs.returncode == 0, runs.stderr
    assert "cli-run" in runs.stdout and "critical" in runs.stdout and "nlp" in runs.stdout
    events = _cli("events", "cli-run", "--url", service_process.url)
    assert events.returncode == 0 and "nonfinite" in events.stdout and "critical" in events.stdout


def test_cli_says_how_to_fix_an_unreachable_service() -> None:
    from tests.conftest import free_port

    done = _cli("runs", "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "nanwatch serve" in done.stderr
