"""Schemathesis against the service's own OpenAPI document, served by ``nanwatch serve``, with no token
configured and with a tokens file: every phase (examples, coverage, fuzzing, stateful) and every check, for
a bounded time (``NANWATCH_FUZZ_SECONDS``, 75 s a mode by default). No answer may be a 5xx, break the
schema it documents, use an undocumented status or content type, refuse a request the schema allows or
accept one it forbids (see schemathesis.toml for the one check a cross-field rule turns off). The seed is
fixed so that CI explores the same cases each time; ``NANWATCH_FUZZ_SEED`` picks another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanwatch_service.auth import add_token
from tests.conftest import REPO, ServiceProcess

HERE = Path(__file__).resolve().parent
SECONDS = int(os.environ.get("NANWATCH_FUZZ_SECONDS", "75"))
SEED = os.environ.get("NANWATCH_FUZZ_SEED", "18")


@pytest.mark.timeout(SECONDS + 180)
@pytest.mark.parametrize("with_tokens", [False, True], ids=["no-tokens", "tokens-file"])
def test_schemathesis_finds_nothing_wrong(tmp_path: Path, with_tokens: bool) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    assert schemathesis.exists(), "schemathesis is missing: pip install 'nanwatch[dev]'"
    env, headers = {}, []
    if with_tokens:
        tokens = tmp_path / "tokens.toml"
        token = add_token(tokens, name="fuzz-admin", team="fuzz", role="admin")
        env, headers = {"NANWATCH_TOKENS_FILE": str(tokens)}, ["-H", f"Authorization: Bearer {token}"]
    service = ServiceProcess(tmp_path / "nanwatch.db", extra_env=env)
    try:
        service.start()
        args = [str(schemathesis), "--config-file", str(HERE / "schemathesis.toml"), "--no-color", "run"]
        args += [f"{service.url}/openapi.json", *headers, "--max-time", str(SECONDS), "--seed", SEED]
        args += ["--workers", "2", "--generation-database", ":memory:", "--request-timeout", "30"]
        python_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        done = subprocess.run(
            args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": python_path}, capture_output=True, text=True,
            timeout=SECONDS + 120, check=False,
        )  # fmt: skip
    finally:
        service.stop()
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-12_000:] + done.stderr[-3000:]
    assert "No issues found" in done.stdout or " passed" in done.stdout
