"""A lean HTTP/1.1 load generator on asyncio streams, for benchmarks that drive a server on this machine.

The machine that runs the server also runs the load, so the generator must cost little: one keep-alive
connection per simulated job, requests written as prepared bytes, responses parsed by hand (status line,
``Content-Length`` or chunked body). Only 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


class HttpError(RuntimeError):
    """The server answered with a status the benchmark did not expect, or broke the connection."""


class Connection:
    """One keep-alive HTTP/1.1 connection to ``127.0.0.1:port``; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        """Send one request; return the status and the body of the answer."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\nAccept: {content_type}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        assert self._reader is not None
        return await _read_response(self._reader)

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, await _read_chunked(reader)
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")
    return b"".join(parts)


@dataclass
class Tally:
    """What a load run counted: items (records or steps) accepted, request latencies, errors."""

    items: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Items per second."""
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) in seconds."""
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=1000, method="inclusive")[int(q * 10) - 1]


Job = Callable[[Connection, int], Awaitable[int]]
"""One request of a job: given its connection and its request number, send it, return the items accepted."""


async def drive(
    port: int, jobs: list[Job], *, seconds: float, warmup: float = 2.0, interval: float | None = None
) -> Tally:
    """Run every job for ``warmup + seconds`` and count what completes after the warm-up: as fast as its
    answers come (closed loop), or one request every ``interval`` seconds per job (open loop, each job's
    start spread over the first interval; a late request goes at once)."""
    tally = Tally()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def run(index: int, job: Job) -> None:
        connection = Connection(port)
        try:
            number = 0
            while (now := time.perf_counter()) < stop_at:
                if interval is not None:
                    due = start + interval * (number + index / len(jobs))
                    if due > now:
                        await asyncio.sleep(due - now)
                        now = time.perf_counter()
                try:
                    items = await job(connection, number)
                except (HttpError, OSError, asyncio.IncompleteReadError):
                    items = -1
                    await connection.close()
                    connection = Connection(port)
                done = time.perf_counter()
                if measure_from <= done < stop_at:
                    tally.latencies.append(done - now)
                    if items < 0:
                        tally.errors += 1
                    else:
                        tally.items += items
                number += 1
        finally:
            await connection.close()

    await asyncio.gather(*(run(i, job) for i, job in enumerate(jobs)))
    tally.seconds = seconds
    return tally
