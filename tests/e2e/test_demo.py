"""``nanwatch demo``, run as a user runs it: the diverging job, what the service saw, the comparison."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ServiceProcess

pytestmark = pytest.mark.tf


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NANWATCH_URL"}
    return subprocess.run(
        [sys.executable, "-m", "nanwatch_service.cli", "demo", *args],
        capture_output=True, text=True, timeout=240, check=False, env=env,
    )  # fmt: skip


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix))


def test_demo_halts_the_diverging_job_with_finite_weights_where_terminate_on_nan_loses_them() -> None:
    done = _demo()  # no --url: the demo starts its own service
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    watched, baseline = _line(out, "with nanwatch:"), _line(out, "with TerminateOnNaN:")
    assert "halted at step" in watched and "weights all finite" in watched, out
    assert "NOT finite" in baseline, out
    halted_at = int(watched.split("halted at step ")[1].split()[0])
    baseline_steps = int(baseline.split("stopped after ")[1].split()[0])
    assert halted_at < baseline_steps - 1, out  # before the step whose loss is NaN
    findings = out.split("findings")[1]
    assert "grad_explosion" in findings and "critical" in findings and "clipnorm" in findings, out
    assert "nanwatch: halting run demo-" in done.stderr, done.stderr[-3000:]  # the callback's one log line


def test_demo_against_a_running_service_leaves_the_halted_run_there(service_process: ServiceProcess) -> None:
    done = _demo("--url", service_process.url)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = _line(done.stdout, "nanwatch demo:").split("; run ")[1].strip()
    view = httpx.get(f"{service_process.url}/v1/runs/{run_id}").json()
    assert view["status"] == "halted" and view["health"] == "critical", view
