"""The tokens file and the ways a service is opened: ``nanwatch tokens add``, reading the file again on a
change or on SIGHUP, the refusal to serve anyone without tokens, and tokens that never leak."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nanwatch_service.auth import Role, TokenBook, TokensFileError, add_token, parse_tokens
from nanwatch_service.cli import main
from tests.conftest import ServiceProcess, wait_until
from tests.service.helpers import LAYERS, post_steps, record


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanwatch_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_tokens_add_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    done = _cli("tokens", "add", "--name", "vision-ci", "--team", "vision", "--role", "writer", "--file", str(file))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert len(token) > 40 and token not in file.read_text() and token not in done.stderr
    [entry] = parse_tokens(file.read_text())
    assert (entry.name, entry.team, entry.role) == ("vision-ci", "vision", Role.WRITER)
    assert entry.digest == hashlib.sha256(token.encode()).digest()
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    env = {"NANWATCH_TOKENS_FILE": str(file)}
    again = _cli("tokens", "add", "--name", "vision-ci", "--team", "x", "--role", "reader", env=env)
    assert again.returncode == 1 and "listed twice" in again.stderr
    assert len(parse_tokens(file.read_text())) == 1


def test_the_tokens_file_keeps_its_documented_format(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    text = f'[[tokens]]\nname = "alertmanager"\nteam = "*"\nrole = "operator"\nsha256 = "{digest}"\n'
    [token] = parse_tokens(text)
    assert (token.name, token.team, token.role) == ("alertmanager", "*", Role.OPERATOR)
    book_file = tmp_path / "t.toml"
    book_file.write_text(text)
    caller = TokenBook(book_file).resolve("s3cret")
    assert caller is not None and caller.sees_every_team and caller.name == "alertmanager"
    assert TokenBook(book_file).resolve("s3cret ") is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[tokens]]\nname = "a"\nteam = "t"\nrole = "boss"\nsha256 = "' + "0" * 64 + '"\n', "tokens[0].role"),
        ('[[tokens]]\nname = "a"\nteam = "t"\nrole = "reader"\nsha256 = "abc"\n', "tokens[0].sha256"),
        ('[[tokens]]\nname = "a"\nteam = "t"\nrole = "reader"\ntoken = "plain"\n', "unknown key(s) ['token']"),
        ('[[tokens]]\nteam = "t"\nrole = "reader"\nsha256 = "' + "0" * 64 + '"\n', "tokens[0].name"),
        ("tokens = 3", "array of tables"),
        ("[[tokens]\n", "not valid TOML"),
    ],
)
def test_a_wrong_tokens_file_is_refused_naming_the_key_and_never_a_value(text: str, says: str) -> None:
    with pytest.raises(TokensFileError) as refused:
        parse_tokens(text)
    assert says in str(refused.value) and "plain" not in str(refused.value)


def test_serve_refuses_a_public_address_without_tokens(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["serve", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db")], environ={})
    assert code == 1
    err = capsys.readouterr().err
    assert "refusing to serve 0.0.0.0 without tokens" in err and "--allow-anonymous" in err and "--tokens-file" in err
    assert not (tmp_path / "x.db").exists()


def test_serve_stops_at_a_broken_tokens_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "tokens.toml"
    broken.write_text('[[tokens]]\nname = "a"\n')
    assert main(["serve", "--tokens-file", str(broken), "--db", str(tmp_path / "x.db")], environ={}) == 1
    assert "tokens[0].team: required" in capsys.readouterr().err


def test_serve_says_who_may_call_it(tmp_path: Path) -> None:
    process = ServiceProcess(tmp_path / "nanwatch.db")
    try:
        process.start()
        assert "no token configured: anyone on this machine may call 127.0.0.1" in process.log.read_text()
        assert httpx.get(f"{process.url}/v1/runs").status_code == 200  # loopback without tokens: open, as before
    finally:
        process.stop()


def test_sighup_reads_an_unchanged_looking_tokens_file_again(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    first, second = add_token(file, name="ci", team="vision", role="writer"), "nw_second-token"
    hashes = {token: hashlib.sha256(token.encode()).hexdigest() for token in (first, second)}
    _rewrite_in_place(file, hashes[first], hashes[second])
    process = ServiceProcess(tmp_path / "nanwatch.db", extra_env={"NANWATCH_TOKENS_FILE": str(file)})
    try:
        process.start()
        assert process.proc is not None

        def status(token: str) -> int:
            return httpx.get(f"{process.url}/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code

        assert status(second) == 200
        _rewrite_in_place(file, hashes[second], hashes[first])
        assert status(first) == 401 and status(second) == 200  # the service has not noticed
        process.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: status(first) == 200, what="the tokens file read again after SIGHUP")
        assert status(second) == 401 and process.proc.poll() is None
    finally:
        process.stop()


def _rewrite_in_place(file: Path, old: str, new: str) -> None:
    """Swap a hash for another of the same length, keeping the file's inode, size and mtime."""
    before = file.stat()
    text = file.read_text().replace(old, new)
    with file.open("r+") as same:
        same.write(text)
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert file.stat().st_size == before.st_size


def test_no_token_leaks_into_logs_bodies_or_metrics(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    tokens = {name: add_token(file, name=name, team="vision", role=role) for name, role in (("w", "writer"),)}
    tokens["r"] = add_token(file, name="r", team="nlp", role="reader")
    tokens |= {"legacy": "legacy-admin-token-0123456789", "hook": "legacy-hook-token-0123456789"}
    env = {"NANWATCH_TOKENS_FILE": str(file), "NANWATCH_TOKEN": tokens["legacy"]}
    env["NANWATCH_WEBHOOK_TOKEN"] = tokens["hook"]
    process = ServiceProcess(tmp_path / "nanwatch.db", extra_env=env, log_level="debug")
    seen: list[str] = []
    try:
        process.start()
        for name, token in tokens.items():
            for header in (f"Bearer {token}", f"Bearer {token}x", f"Bearer {token[:-1]}", token, f"Basic {token}"):
                seen += _session(process.url, header, run_id=f"run-{name}")
        file.write_text(file.read_text() + "\n[[tokens]]\nname = 'broken'\n")  # a reload that fails
        seen += _session(process.url, f"Bearer {tokens['w']}", run_id="after-reload")
        seen.append(httpx.get(f"{process.url}/metrics").text)
    finally:
        process.stop()
    logged = process.log.read_text()
    assert "tokens[" in logged  # the broken file was reported
    for name, token in tokens.items():
        assert token not in logged, f"token {name} in the log"
        assert not any(token in body for body in seen), f"token {name} in a reply"


def _session(url: str, authorization: str, run_id: str) -> list[str]:
    """A burst of calls, good and bad, with this Authorization header; every reply body."""
    headers = {"Authorization": authorization}
    bodies = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for response in (
            client.put(f"/v1/runs/{run_id}", json={"name": run_id, "layers": LAYERS}),
            post_steps(client, run_id, [record(0), record(1, loss=float("nan"))]),
            client.post(f"/v1/runs/{run_id}/steps", content=b"{not json", headers={"Content-Type": "application/json"}),
            client.get(f"/v1/runs/{run_id}/steps", params={"fields": "colour"}),
            client.post(f"/v1/runs/{run_id}/halt", json={"reason": "leak check"}),
            client.get("/v1/runs/nobody/events"),
            client.delete(f"/v1/runs/{run_id}"),
            client.post("/v1/alertmanager", json={"version": "3"}),
            client.get("/v1/runs"),
        ):
            bodies.append(response.text + repr(dict(response.headers)))
    return bodies
