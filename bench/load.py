"""A cluster's load on two replicas: 1,000 jobs streaming, an operator halting runs through the other replica.

    .venv/bin/python bench/load.py [--jobs 1000] [--seconds 60] [--halts 2] [--layers 64]

Two ``nanwatch serve`` processes (replicas A and B) share one fresh PostgreSQL schema; the jobs are spread
over them by run id, as a load balancer hashing the path would (``--one-replica`` sends them all to A).
Each simulated job does what the client does, on connections of its own to its replica: one step record a
second (``--layers`` layers, every statistic: 772 values for 64), posted with protocol 2 as the Monitor's
sender does, and one command channel kept open (``GET .../commands``, a long poll). Meanwhile an operator
halts ``--halts`` random running jobs a second, each through the replica its job does not talk to
(``POST .../halt``); a halted job acknowledges and stops. The load runs in this process on asyncio
(``bench/_load.py``), on the same machine as the replicas and the database.

Prints errors, ingest latency p50/p99, and the halt delivery time (from the operator's request leaving to
the job holding the command, by whichever way came first) p50/p99/max, with the halts never delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._load import Connection
from bench._service import cpu_seconds, port_of, postgres_cpu_seconds, serving
from bench.ingest import Batches, postgres_url
from nanwatch import protocol
from nanwatch.columns import StepColumns

WARMUP = 5.0


@dataclass
class Results:
    """What the load run saw."""

    ingest: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)  # run id -> when its halt request left
    delivered: dict[str, float] = field(default_factory=dict)  # run id -> seconds until the job had it
    by: dict[str, str] = field(default_factory=dict)  # run id -> "channel" or "reply"
    cores: dict[str, float] = field(default_factory=dict)  # who -> CPU seconds a second over the measured window

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def seen(self, run_id: str, how: str) -> None:
        if run_id in self.sent and run_id not in self.delivered:
            self.delivered[run_id] = time.perf_counter() - self.sent[run_id]
            self.by[run_id] = how


class Job:
    """One simulated training job: a step a second, and a command channel."""

    def __init__(self, run_id: str, port: int, batches: Batches, results: Results, start: float, stop: float) -> None:
        self.run_id, self.port, self.batches, self.results = run_id, port, batches, results
        self.start, self.stop = start, stop
        self.attempt = f"load-{run_id}"
        self.halt: dict[str, object] | None = None
        self.acked = False
        self.step = 0

    async def stream(self) -> None:
        connection = Connection(self.port)
        next_at = self.start + random.random()
        try:
            while (now := time.perf_counter()) < self.stop and not self.acked:
                await asyncio.sleep(max(0.0, next_at - now))
                next_at += 1.0
                await self._post(connection)
        finally:
            await connection.close()

    async def _post(self, connection: Connection) -> None:
        acks = [{"id": self.halt["id"], "step": self.step}] if self.halt else []
        body = self._body(acks)
        sent = time.perf_counter()
        try:
            status, reply = await connection.request("POST", f"/v1/runs/{self.run_id}/steps", body, protocol.MSGPACK)
        except (OSError, asyncio.IncompleteReadError):
            self.results.error("ingest: connection")
            return
        if sent >= self.start + WARMUP:
            self.results.ingest.append(time.perf_counter() - sent)
        if status != 200:
            self.results.error(f"ingest: HTTP {status}")
            return
        self.acked = bool(acks)
        self._take(protocol.loads(reply)["commands"], "reply")
        self.step += 1

    def _body(self, acks: list[dict[str, object]]) -> bytes:
        row = self.step % self.batches.batch  # healthy, noisy records, one after the other
        template = self.batches.template.take(slice(row, row + 1))
        scalars = template.scalars.copy()
        scalars[0, 0] = time.time()
        steps = np.array([self.step], dtype=np.int64)
        columns = StepColumns(steps, template.scalar_names, scalars, template.layer_names, template.layers)
        return protocol.encode_batch(columns, attempt=self.attempt, acks=acks)[0]

    async def listen(self) -> None:
        connection = Connection(self.port)
        try:
            while time.perf_counter() < self.stop and self.halt is None:
                known = urllib.parse.urlencode({"wait": 10})
                try:
                    status, reply = await connection.request(
                        "GET", f"/v1/runs/{self.run_id}/commands?{known}", b"", protocol.MSGPACK
                    )
                except (OSError, asyncio.IncompleteReadError):
                    self.results.error("channel: connection")
                    await asyncio.sleep(1.0)
                    connection = Connection(self.port)
                    continue
                if status != 200:
                    self.results.error(f"channel: HTTP {status}")
                    await asyncio.sleep(1.0)
                    continue
                self._take(protocol.loads(reply)["commands"], "channel")
        finally:
            await connection.close()

    def _take(self, commands: list[dict[str, object]], how: str) -> None:
        if commands and self.halt is None:
            self.halt = commands[0]
            self.results.seen(self.run_id, how)


async def operate(
    ports: tuple[int, int], jobs: list[Job], per_second: float, results: Results, start: float, stop: float
) -> None:
    """Halt ``per_second`` random running jobs a second, each through the other replica than its job's. The
    halts leave on schedule (open loop), each on a connection of its own, however long the last one takes."""
    await asyncio.sleep(max(0.0, start + WARMUP - time.perf_counter()))
    sending: list[asyncio.Task[None]] = []
    next_at = time.perf_counter()
    while next_at < stop - 5.0:  # leave the last halts time to arrive
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        next_at += 1.0 / per_second
        candidates = [job for job in jobs if job.halt is None and job.run_id not in results.sent]
        job = random.choice(candidates)
        other = ports[1] if job.port == ports[0] else ports[0]
        sending.append(asyncio.create_task(_halt(other, job.run_id, results)))
    await asyncio.gather(*sending)


async def _halt(port: int, run_id: str, results: Results) -> None:
    connection = Connection(port)
    body = protocol.dumps({"reason": "load test"}, protocol.JSON)
    results.sent[run_id] = time.perf_counter()
    try:
        status, _ = await connection.request("POST", f"/v1/runs/{run_id}/halt", body, protocol.JSON)
    except (OSError, asyncio.IncompleteReadError):
        results.error("halt: connection")
        return
    finally:
        await connection.close()
    if status != 202:
        results.error(f"halt: HTTP {status}")


async def register(port: int, run_ids: list[str], batches: Batches) -> None:
    body = protocol.dumps({**batches.run, "name": "load", "team": "load"}, protocol.MSGPACK)
    connection = Connection(port)
    for run_id in run_ids:
        status, reply = await connection.request("PUT", f"/v1/runs/{run_id}", body, protocol.MSGPACK)
        assert status in (200, 201), reply[:200]
    await connection.close()


async def account(pids: dict[str, int], results: Results, start: float, stop: float) -> None:
    """How many cores each process kept busy between the end of the warm-up and the end of the load."""

    def snapshot() -> dict[str, float]:
        used = {who: cpu_seconds(pid) for who, pid in pids.items()}
        return {**used, "PostgreSQL": postgres_cpu_seconds(), "load generator": time.process_time()}

    await asyncio.sleep(max(0.0, start + WARMUP - time.perf_counter()))
    began, first = time.perf_counter(), snapshot()
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    seconds, last = time.perf_counter() - began, snapshot()
    results.cores = {who: (last[who] - first[who]) / seconds for who in first}


async def run_load(a: int, b: int, pids: dict[str, int], args: argparse.Namespace) -> Results:
    batches = Batches(args.layers, 50)
    run_ids = [f"load-{i}" for i in range(args.jobs)]
    await register(a, run_ids, batches)
    results = Results()
    start = time.perf_counter() + 1.0
    stop = start + WARMUP + args.seconds
    home = [a if args.one_replica or i % 2 == 0 else b for i in range(args.jobs)]
    jobs = [Job(run_id, port, batches, results, start, stop) for run_id, port in zip(run_ids, home, strict=True)]
    tasks = [job.stream() for job in jobs] + [job.listen() for job in jobs]
    load = operate((a, b), jobs, args.halts, results, start, stop)
    await asyncio.gather(*tasks, load, account(pids, results, start, stop))
    return results


def report(results: Results, args: argparse.Namespace) -> None:
    ingest = sorted(results.ingest)
    delivered = sorted(results.delivered.values())
    lost = [run_id for run_id in results.sent if run_id not in results.delivered]

    def pct(values: list[float], q: float) -> float:
        return 1000 * values[min(len(values) - 1, int(q / 100 * len(values)))] if values else float("nan")

    spread = "all on replica A" if args.one_replica else "spread over both replicas"
    print(f"{args.jobs} jobs x 1 record/s of {args.layers} layers ({spread}), {args.seconds:g} s after {WARMUP:g} s")
    print(f"  errors: {sum(results.errors.values())} {results.errors or ''}")
    print(f"  ingest: {len(ingest):,} requests, p50 {pct(ingest, 50):.1f} ms, p99 {pct(ingest, 99):.1f} ms")
    ways = {how: list(results.by.values()).count(how) for how in ("channel", "reply")}
    print(
        f"  halts through the other replica: {len(results.sent)} sent, {len(delivered)} delivered {ways}, "
        f"{len(lost)} not delivered"
    )
    if delivered:
        print(
            f"  halt delivery: p50 {pct(delivered, 50):.0f} ms, p99 {pct(delivered, 99):.0f} ms, "
            f"max {1000 * delivered[-1]:.0f} ms, mean {1000 * statistics.mean(delivered):.0f} ms"
        )
    busy = ", ".join(f"{who} {cores:.2f}" for who, cores in results.cores.items())
    print(f"  cores busy (of {os.cpu_count()}): {busy}, all {sum(results.cores.values()):.2f}")
    replicas = results.cores.get("replica A", 0.0) + results.cores.get("replica B", 0.0)
    if ingest:
        per_request = 1000 * replicas * args.seconds / len(ingest)
        print(f"  replica CPU per ingest request (with its channel and the halts): {per_request:.2f} ms")


def print_profile(path: Path, top: int = 12) -> None:
    """Replica A's event-loop thread under cProfile: own time of the Python code by package, then the
    costliest functions. uvloop's own C (sockets, idle waits) is booked to ``asyncio.run`` and left out."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    python = {key: value for key, value in stats.items() if not (key[0].endswith("runners.py") and key[2] == "run")}
    own: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in python.items():
        own[_package(filename)] = own.get(_package(filename), 0.0) + tottime
    total = sum(own.values())
    print(f"  replica A's event-loop thread under cProfile, its Python code: {total:.1f} s own time")
    for package, seconds in sorted(own.items(), key=lambda item: -item[1])[:top]:
        print(f"    {100 * seconds / total:5.1f} %  {package}")
    print("  costliest functions (own time):")
    for (filename, line, name), (_, calls, tottime, _, _) in sorted(python.items(), key=lambda item: -item[1][2])[:top]:
        print(f"    {100 * tottime / total:5.1f} %  {calls:>9,} calls  {name}  {filename.rsplit('/', 2)[-1]}:{line}")


def _package(filename: str) -> str:
    for marker in ("nanwatch_service/detectors", "nanwatch_service/store", "nanwatch_service/api", "nanwatch_service"):
        if marker in filename:
            return marker
    for name in ("uvicorn", "starlette", "fastapi", "pydantic", "httptools", "psycopg", "numpy", "msgpack", "asyncio"):
        if f"/{name}/" in filename:
            return name
    if "/nanwatch/" in filename:
        return "nanwatch (protocol)"
    return "other: " + (filename.rsplit("/", 1)[-1] if "/" in filename else filename)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--halts", type=float, default=2.0, help="operator halts a second")
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--one-replica", action="store_true", help="every job streams to A (halts through B)")
    parser.add_argument("--profile", action="store_true", help="run the replicas under cProfile; print A's profile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profiles = (Path(tmp) / "a.prof", Path(tmp) / "b.prof") if args.profile else (None, None)
        with (
            postgres_url() as url,
            serving(database_url=url, profile=profiles[0]) as (a_url, a),
            serving(database_url=url, profile=profiles[1]) as (b_url, b),
        ):
            pids = {"replica A": a.pid, "replica B": b.pid}
            results = asyncio.run(run_load(port_of(a_url), port_of(b_url), pids, args))
        report(results, args)
        if profiles[0] is not None:
            print_profile(profiles[0])


if __name__ == "__main__":
    main()
