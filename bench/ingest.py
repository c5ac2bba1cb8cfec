"""Ingest throughput: nanwatch (SQLite, PostgreSQL) against MLflow's tracking server, the same jobs, one run.

    .venv/bin/python bench/ingest.py [--jobs 16] [--batch 50] [--layers 64] [--seconds 15] [--repeat 3]
        [--targets nanwatch-sqlite,nanwatch-postgres,mlflow-heavy,mlflow-light] [--paced 20000] [--rss-runs 1000]

Every target gets the same ``--jobs`` simulated training jobs, each on its own keep-alive connection, each
sending its next request as soon as the last one was answered (closed loop), for ``--seconds`` after a
warm-up; the targets take turns, ``--repeat`` times, and the medians are printed with their ratios.

- ``nanwatch-sqlite`` / ``nanwatch-postgres``: one ``nanwatch serve`` process; each request a protocol-2
  batch of ``--batch`` healthy records of ``--layers`` layers with every layer statistic (12 per layer) and
  4 scalars: 772 values a step for 64 layers. Items are records.
- ``mlflow-heavy``: MLflow's tracking server (its own virtualenv, SQLite backend store, its default
  server settings), ``runs/log-batch`` with the same 772 values of a step as metrics; MLflow takes at most
  1,000 metrics a request, so one step a request. Items are steps.
- ``mlflow-light``: the same server, MLflow's usual light steps of 66 metrics, 15 steps (990 metrics) a
  request. Items are steps.

``--paced R`` also runs nanwatch-sqlite open loop at R records/s (each job one request every
``jobs × batch / R`` seconds) and prints the latency at that rate. ``--rss-runs N`` starts a fresh
nanwatch, registers N runs of ``--layers`` layers, sends each 150 records (more than a detector window)
and prints the service's resident memory. The load generator (bench/_load.py) runs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._load import Connection, HttpError, Job, Tally, drive
from bench._service import free_port, port_of, serving, wait_for_port
from bench.detector_throughput import make_records, make_run
from nanwatch import protocol
from nanwatch.columns import StepColumns

ROOT = Path(__file__).resolve().parent.parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
LIGHT_METRICS = 66
LIGHT_STEPS_PER_REQUEST = 15


# --------------------------------------------------------------------------- nanwatch jobs


class Batches:
    """Protocol-2 bodies of ``batch`` healthy records, each request with its own steps and wall times."""

    def __init__(self, layers: int, batch: int) -> None:
        self.run = make_run(layers)
        self.batch = batch
        template = StepColumns.from_records(make_records(self.run, batch, diverge_at=None), layers)
        wall = np.zeros((batch, 1))
        self.template = StepColumns(
            template.steps,
            ("wall_time", *template.scalar_names),
            np.hstack([wall, template.scalars]),
            template.layer_names,
            template.layers,
        )

    def values_per_step(self) -> int:
        """Numbers a step carries (scalars and every layer statistic)."""
        return self.template.scalars.shape[1] + self.template.layers.shape[1] * self.template.layers.shape[2]

    def body(self, number: int, attempt: str) -> bytes:
        """Request ``number``'s body."""
        steps = number * self.batch + np.arange(self.batch, dtype=np.int64)
        scalars = self.template.scalars.copy()
        scalars[:, 0] = 1.7e9 + steps
        columns = StepColumns(
            steps, self.template.scalar_names, scalars, self.template.layer_names, self.template.layers
        )
        return protocol.encode_batch(columns, attempt=attempt)[0]


def nanwatch_jobs(url: str, batches: Batches, count: int, prefix: str) -> list[Job]:
    """``count`` registered runs, one job each."""
    port = port_of(url)
    registration = protocol.dumps({**batches.run, "name": "bench", "team": "bench"}, protocol.MSGPACK)
    run_ids = [f"{prefix}-{i}" for i in range(count)]

    async def register() -> None:
        connection = Connection(port)
        for run_id in run_ids:
            status, body = await connection.request("PUT", f"/v1/runs/{run_id}", registration, protocol.MSGPACK)
            if status not in (200, 201):
                raise HttpError(f"registration of {run_id}: {status} {body[:200]!r}")
        await connection.close()

    asyncio.run(register())
    return [_nanwatch_job(run_id, batches) for run_id in run_ids]


def _nanwatch_job(run_id: str, batches: Batches) -> Job:
    path, attempt = f"/v1/runs/{run_id}/steps", uuid.uuid4().hex[:12]

    async def job(connection: Connection, number: int) -> int:
        status, body = await connection.request("POST", path, batches.body(number, attempt), protocol.MSGPACK)
        if status != 200:
            raise HttpError(f"{status} {body[:200]!r}")
        return batches.batch

    return job


# --------------------------------------------------------------------------- MLflow jobs


def mlflow_jobs(port: int, count: int, *, metrics: int, steps_per_request: int) -> list[Job]:
    """``count`` MLflow runs in the default experiment, one job each, logging ``metrics`` a step."""

    async def create() -> list[str]:
        connection = Connection(port)
        run_ids = []
        for _ in range(count):
            body = json.dumps({"experiment_id": "0", "start_time": int(time.time() * 1000)}).encode()
            status, reply = await connection.request("POST", "/api/2.0/mlflow/runs/create", body, "application/json")
            if status != 200:
                raise HttpError(f"runs/create: {status} {reply[:200]!r}")
            run_ids.append(json.loads(reply)["run"]["info"]["run_id"])
        await connection.close()
        return run_ids

    template = _log_batch_template(metrics, steps_per_request)
    return [_mlflow_job(run_id, template, steps_per_request) for run_id in asyncio.run(create())]


def _log_batch_template(metrics: int, steps: int) -> str:
    rng = np.random.default_rng(0)
    entries = [
        f'{{"key": "m{j}", "value": {rng.lognormal():.6g}, "timestamp": __T__, "step": __S{i}__}}'
        for i in range(steps)
        for j in range(metrics)
    ]
    return '{"run_id": "__RUN__", "metrics": [' + ", ".join(entries) + "]}"


def _mlflow_job(run_id: str, template: str, steps: int) -> Job:
    prepared = template.replace("__RUN__", run_id)

    async def job(connection: Connection, number: int) -> int:
        body = prepared.replace("__T__", str(int(time.time() * 1000)))
        for i in range(steps):
            body = body.replace(f"__S{i}__", str(number * steps + i))
        status, reply = await connection.request(
            "POST", "/api/2.0/mlflow/runs/log-batch", body.encode(), "application/json"
        )
        if status != 200:
            raise HttpError(f"{status} {reply[:200]!r}")
        return steps

    return job


@contextmanager
def mlflow_server(venv: Path) -> Iterator[int]:
    """MLflow's tracking server on a fresh SQLite store, its default server settings; yields its port."""
    mlflow = venv / "bin" / "mlflow"
    if not mlflow.exists():
        print(f"installing MLflow into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "mlflow"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        args = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--default-artifact-root", f"{tmp}/artifacts"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(port, 180)
            yield port
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server and the workers it forked."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- targets


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh schema in the test database; dropped afterwards."""
    import psycopg

    schema = f"nw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def measure(target: str, args: argparse.Namespace, batches: Batches, rep: int) -> Tally:
    """One closed-loop measurement of ``target``."""
    if target.startswith("nanwatch"):
        with nanwatch_url(target) as url:
            jobs = nanwatch_jobs(url, batches, args.jobs, f"{target}-{rep}")
            return asyncio.run(drive(port_of(url), jobs, seconds=args.seconds))
    heavy = target == "mlflow-heavy"
    with mlflow_server(args.mlflow_venv) as port:
        metrics = batches.values_per_step() if heavy else LIGHT_METRICS
        jobs = mlflow_jobs(port, args.jobs, metrics=metrics, steps_per_request=1 if heavy else LIGHT_STEPS_PER_REQUEST)
        return asyncio.run(drive(port, jobs, seconds=args.seconds))


@contextmanager
def nanwatch_url(target: str) -> Iterator[str]:
    """The URL of a fresh nanwatch for ``target``."""
    if target == "nanwatch-postgres":
        with postgres_url() as url, serving(database_url=url) as (service, _):
            yield service
    else:
        with serving() as (service, _):
            yield service


def paced(args: argparse.Namespace, batches: Batches) -> Tally:
    """nanwatch-sqlite at ``--paced`` records/s, open loop."""
    interval = args.jobs * args.batch / args.paced
    with serving() as (url, _):
        jobs = nanwatch_jobs(url, batches, args.jobs, "paced")
        return asyncio.run(drive(port_of(url), jobs, seconds=args.seconds, interval=interval))


def resident_memory(args: argparse.Namespace, batches: Batches) -> tuple[float, float]:
    """RSS in MiB of a fresh nanwatch before and after ``--rss-runs`` runs have each sent 150 records."""
    with serving() as (url, proc):
        before = _rss_mib(proc.pid)
        jobs = nanwatch_jobs(url, batches, args.rss_runs, "rss")
        sends = -(-150 // args.batch)

        async def feed() -> None:
            port = port_of(url)
            queue = list(enumerate(jobs))

            async def worker() -> None:
                connection = Connection(port)
                while queue:
                    _, job = queue.pop()
                    for number in range(sends):
                        await job(connection, number)
                await connection.close()

            await asyncio.gather(*(worker() for _ in range(args.jobs)))

        asyncio.run(feed())
        return before, _rss_mib(proc.pid)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--targets", default="nanwatch-sqlite,nanwatch-postgres,mlflow-heavy,mlflow-light")
    parser.add_argument("--paced", type=float, default=0.0, help="also run nanwatch-sqlite at this many records/s")
    parser.add_argument("--rss-runs", type=int, default=0, help="also measure RSS with this many active runs")
    parser.add_argument("--mlflow-venv", type=Path, default=ROOT / ".bench-venvs" / "mlflow")
    args = parser.parse_args()
    batches = Batches(args.layers, args.batch)
    targets = args.targets.split(",")
    print(f"{args.jobs} jobs, {batches.values_per_step()} values a step; {args.seconds:g} s per measurement")
    results: dict[str, list[Tally]] = {target: [] for target in targets}
    for rep in range(args.repeat):
        for target in targets:
            tally = measure(target, args, batches, rep)
            results[target].append(tally)
            print(f"  {target:18} rep {rep}: {_line(tally, target)}", flush=True)
    _summary(results)
    if args.paced:
        tally = paced(args, batches)
        print(f"nanwatch-sqlite paced at {args.paced:,.0f} records/s: {_line(tally, 'nanwatch')}")
    if args.rss_runs:
        before, after = resident_memory(args, batches)
        print(f"RSS: {before:,.0f} MiB idle, {after:,.0f} MiB with {args.rss_runs} active {args.layers}-layer runs")


def _line(tally: Tally, target: str) -> str:
    unit = "records" if target.startswith("nanwatch") else "steps"
    return (
        f"{tally.rate:10,.0f} {unit}/s, p50 {1000 * tally.percentile(50):7.1f} ms, "
        f"p99 {1000 * tally.percentile(99):7.1f} ms, {tally.errors} errors"
    )


def _summary(results: dict[str, list[Tally]]) -> None:
    medians = {target: statistics.median(t.rate for t in tallies) for target, tallies in results.items()}
    print("medians:")
    for target, tallies in results.items():
        p99 = statistics.median(t.percentile(99) for t in tallies)
        print(f"  {target:18} {medians[target]:10,.0f} /s   p99 {1000 * p99:7.1f} ms")
    ours = medians.get("nanwatch-sqlite")
    for other in ("mlflow-light", "mlflow-heavy", "nanwatch-postgres"):
        if ours and medians.get(other):
            print(f"  nanwatch-sqlite / {other}: {ours / medians[other]:,.1f}x")
    if medians.get("nanwatch-postgres") and medians.get("mlflow-light"):
        print(f"  nanwatch-postgres / mlflow-light: {medians['nanwatch-postgres'] / medians['mlflow-light']:,.1f}x")


if __name__ == "__main__":
    main()
