"""The ``nanwatch`` command: serve the service, and ask a running one about runs, events and halts.

Every option also reads a ``NANWATCH_*`` environment variable (``--port`` ↔ ``NANWATCH_PORT``,
``--url`` ↔ ``NANWATCH_URL``, ``--token`` ↔ ``NANWATCH_TOKEN``...).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nanwatch import protocol
from nanwatch.transport import HttpTransport, Request
from nanwatch.vocabulary import HaltPolicy, RunStatus
from nanwatch_service.auth import ROLE_NAMES, TokenBook, TokensFileError, add_token
from nanwatch_service.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the exit status."""
    environ = os.environ if environ is None else environ
    args = _parser(environ).parse_args(argv)
    command: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.func
    try:
        return command(args, environ)
    except CliError as exc:
        print(f"nanwatch: {exc}", file=sys.stderr)
        return 1


class CliError(RuntimeError):
    """A command failed in a way the user can fix; the message says how."""


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    settings = Settings.from_env(environ)
    parser = argparse.ArgumentParser(prog="nanwatch", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--host", default=settings.host)
    serve.add_argument("--port", type=int, default=settings.port)
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--db", default=settings.db, help="SQLite file (default %(default)s)")
    where.add_argument("--database-url", default=settings.database_url, help="postgresql://... for replicas")
    serve.add_argument("--tokens-file", default=settings.tokens_file, help="TOML [[tokens]]: name, team, role, sha256")
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=settings.allow_anonymous,
        help="serve a non-loopback address without any token (anyone who reaches it may do anything)",
    )
    # Not "trace": uvicorn's trace level logs every request's headers, bearer tokens included.
    levels = ("critical", "error", "warning", "info", "debug")
    serve.add_argument("--log-level", choices=levels, default=environ.get("NANWATCH_LOG_LEVEL", "info"))
    serve.set_defaults(func=_serve)
    tokens = sub.add_parser("tokens", help="manage the tokens file").add_subparsers(required=True, metavar="ACTION")
    add = tokens.add_parser("add", help="add a token to the tokens file; prints the token, once")
    add.add_argument("--name", required=True, help="who holds it (shown in the audit trail)")
    add.add_argument("--team", required=True, help="the team whose runs it reaches; '*' for every team")
    add.add_argument("--role", required=True, choices=ROLE_NAMES)
    add.add_argument("--file", default=settings.tokens_file, help="the tokens file (default: NANWATCH_TOKENS_FILE)")
    add.set_defaults(func=_add_token)
    for name, func, help_text in (
        ("runs", _runs, "list runs"),
        ("events", _events, "list a run's findings"),
        ("halt", _halt, "halt a run at its next batch end"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--url", default=environ.get("NANWATCH_URL", DEFAULT_URL))
        command.add_argument("--token", default=environ.get("NANWATCH_TOKEN"))
        command.add_argument("--json", action="store_true", help="print the service's JSON")
        command.set_defaults(func=func)
        if name != "runs":
            command.add_argument("run_id", metavar="RUN")
    runs = sub.choices["runs"]
    runs.add_argument("--status", choices=[str(status) for status in RunStatus])
    runs.add_argument("--team")
    sub.choices["halt"].add_argument("--reason", required=True)
    demo = sub.add_parser("demo", help="watch a small diverging Keras job being halted (needs TensorFlow)")
    demo.add_argument("--url", default=environ.get("NANWATCH_URL"), help="a running service (default: start one)")
    demo.add_argument("--token", default=environ.get("NANWATCH_TOKEN"))
    demo.set_defaults(func=_demo)
    return parser


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from nanwatch_service.app import create_app
    from nanwatch_service.local import server

    settings = Settings.from_env(
        environ,
        host=args.host,
        port=args.port,
        db=args.db,
        database_url=args.database_url,
        tokens_file=args.tokens_file,
        allow_anonymous=args.allow_anonymous or None,
    )
    try:
        app = create_app(settings)
    except TokensFileError as exc:
        raise CliError(f"{exc}; fix the file, or add tokens with `nanwatch tokens add`") from None
    print(f"nanwatch: {_access(settings, app.state.tokens)}", file=sys.stderr, flush=True)
    server(app, host=settings.host, port=settings.port, log_level=args.log_level).run()
    return 0


def _access(settings: Settings, tokens: TokenBook) -> str:
    """Who may call the service, in a line; CliError when it must not start like this."""
    if tokens.path is not None:
        return f"tokens file {tokens.path}: {len(tokens.names)} token(s); every call needs one"
    if tokens.required:
        return f"{' and '.join(tokens.names)} configured; every call needs a token"
    if _is_loopback(settings.host):
        return f"no token configured: anyone on this machine may call {settings.host}:{settings.port}"
    if not settings.allow_anonymous:
        raise CliError(
            f"refusing to serve {settings.host} without tokens: anyone who reaches it could read, halt and delete "
            "every run. Give a tokens file (--tokens-file / NANWATCH_TOKENS_FILE; `nanwatch tokens add` makes "
            "one), or serve 127.0.0.1, or pass --allow-anonymous (NANWATCH_ALLOW_ANONYMOUS=1) if you mean it"
        )
    return f"WARNING: no token configured and serving {settings.host} (--allow-anonymous): anyone may do anything"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _add_token(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if not args.file:
        raise CliError("which tokens file? pass --file PATH or set NANWATCH_TOKENS_FILE")
    try:
        token = add_token(args.file, name=args.name, team=args.team, role=args.role)
    except (TokensFileError, OSError) as exc:
        raise CliError(f"no token added: {exc}") from None
    print(token)
    print(
        f"nanwatch: token {args.name!r} ({args.role} of team {args.team!r}) added to {args.file}; it is printed "
        "once, above, and not stored: hand it to its holder now (a running service reads the file again by "
        "itself)",
        file=sys.stderr,
    )
    return 0


def _runs(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    query = {k: v for k, v in (("status", args.status), ("team", args.team)) if v}
    reply = _request(args, "GET", "/v1/runs" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
    if args.json:
        return _print_json(reply)
    rows = [
        (r["run_id"], r["status"], r["health"], _show(r["last_step"]), _show(r["steps_to_nonfinite"]), r["team"] or "")
        for r in reply["runs"]
    ]
    _table(("RUN", "STATUS", "HEALTH", "STEP", "STEPS_TO_NONFINITE", "TEAM"), rows)
    return 0


def _events(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    reply = _request(args, "GET", f"/v1/runs/{_quote(args.run_id)}/events")
    if args.json:
        return _print_json(reply)
    rows = [
        (
            _show(e["first_step"]),
            e["detector"],
            e["severity"],
            e["layer"] or "-",
            e["state"],
            _show(e.get("steps_to_nonfinite")),
            f"{e['message']} Fix: {e['remedy']}" if e.get("remedy") else e["message"],  # a job's event has none
        )
        for e in reply["events"]
    ]
    _table(("STEP", "DETECTOR", "SEVERITY", "LAYER", "STATE", "FORECAST", "FINDING"), rows)
    return 0


def _halt(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    reply = _request(args, "POST", f"/v1/runs/{_quote(args.run_id)}/halt", {"reason": args.reason})
    if args.json:
        return _print_json(reply)
    command = reply["command"]
    state = "queued" if reply["created"] else "already in force"
    print(f"halt {command['id']} for run {args.run_id} {state}: stops at step >= {command['at_step']}")
    return 0


def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Train ``nanwatch.keras.demo``'s job watched, print what the service saw, then train it unwatched."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from nanwatch.keras import NanWatchCallback, demo
    except ImportError:
        raise CliError("the demo trains a Keras model: pip install 'nanwatch[keras]' (TensorFlow)") from None
    from nanwatch_service.local import local_service

    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with contextlib.nullcontext(args.url) if args.url else local_service() as url:
        where = url if args.url else f"{url} (SQLite in a temporary directory)"
        print(f"nanwatch demo: the service at {where}; run {run_id}")
        print(f"training {demo.TITLE}: unwatched, its loss is NaN at about step 15\n", flush=True)
        callback = NanWatchCallback(
            url, run_id=run_id, token=args.token, halt_on=HaltPolicy.CRITICAL, lockstep=True, flush_interval=0.05,
            name="nanwatch demo", team="demo",
        )  # fmt: skip
        watched = demo.train([callback])
        service = argparse.Namespace(url=url, token=args.token, json=False, run_id=run_id)
        history = _request(service, "GET", f"/v1/runs/{_quote(run_id)}/steps?fields=loss,grad_norm")
        rows = [(str(r["step"]), _show(r["loss"]), _show(r["grad_norm"])) for r in history["steps"]]
        _table(("STEP", "LOSS", "GRAD_NORM"), rows)
        print(f"\nfindings (nanwatch events {run_id}):")
        _events(service, environ)
    baseline = demo.train_with_terminate_on_nan()
    halt = callback.halted
    stop = f"halted at step {halt.step} ({halt.source}, the finding above)" if halt else "not halted"
    print(f"\nwith nanwatch:       {stop}, {watched.steps_run} steps run; weights {_finite(watched.weights_finite)}")
    print(f"with TerminateOnNaN: stopped after {baseline.steps_run} steps; weights {_finite(baseline.weights_finite)}")
    return 0


def _finite(finite: bool) -> str:
    return "all finite" if finite else "NOT finite (NaN/Inf): the model is lost"


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One request through the client's transport (the one the Monitor uses); the decoded JSON answer."""
    transport = HttpTransport(args.url, token=args.token, user_agent="nanwatch-cli")
    headers = {"Accept": protocol.JSON, **({"Content-Type": protocol.JSON} if body is not None else {})}
    data = b"" if body is None else protocol.dumps(body, protocol.JSON)
    try:
        reply = transport.request(Request(method, path, data, headers, timeout=10))
    finally:
        transport.close()
    if reply.status == 0:
        raise CliError(
            f"cannot reach the service at {args.url} ({reply.error}); start it with `nanwatch serve`"
            " or set --url / NANWATCH_URL"
        )
    if not reply.ok:
        raise CliError(f"{method} {path} → {reply.status}: {reply.body.decode(errors='replace')}")
    return json.loads(reply.body)


def _quote(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return "inf" if value == "Infinity" else value  # non-finite floats arrive as strings in JSON
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, str(row[-1])]))


def _print_json(reply: Any) -> int:
    print(json.dumps(reply, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
