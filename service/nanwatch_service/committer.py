"""Group commit: one writer thread persists every ingest write waiting, in one transaction, then answers all.

SQLite has one writer, and a commit costs about the same for one request as for fifty: a transaction per
request makes concurrent requests queue on the database lock. Here requests queue in memory instead; the
writer takes all of them at once (up to ``max_group``), writes them with :meth:`Store.write_ingest`, commits
and wakes each request's coroutine, which only then replies. So every acknowledged record is committed,
and under load the commits grow larger rather than more frequent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from nanwatch_service.store import Store, StoreError
from nanwatch_service.store.base import IngestWrite

MAX_GROUP: Final = 256
_log = logging.getLogger("nanwatch.service")

_Waiting = tuple[IngestWrite, "asyncio.Future[None]", asyncio.AbstractEventLoop]


class GroupCommitter:
    """The one thread that writes ingest requests to ``store``; ``on_commit`` hears each commit's seconds."""

    def __init__(
        self, store: Store, *, max_group: int = MAX_GROUP, on_commit: Callable[[float], None] = lambda s: None
    ) -> None:
        self.store = store
        self.max_group = max_group
        self.on_commit = on_commit
        self._queue: deque[_Waiting] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="nanwatch-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def write(self, write: IngestWrite) -> None:
        """Return once ``write`` is committed; raise StoreError if its transaction failed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._closing:
                raise StoreError("the service is shutting down; retry against another replica")
            self._queue.append((write, done, loop))
            self._cond.notify()
        await done

    def _run(self) -> None:
        while group := self._take():
            failure: BaseException | None = None
            started = time.perf_counter()
            try:
                self.store.write_ingest([write for write, _, _ in group])
            except StoreError as exc:
                failure = exc
            except Exception as exc:  # a bug must fail its requests, not kill the writer
                _log.exception("nanwatch: writing %d ingest requests failed", len(group))
                failure = StoreError(f"writing failed: {type(exc).__name__}: {exc}")
            else:
                self.on_commit(time.perf_counter() - started)
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, done, loop in group:
                by_loop.setdefault(loop, []).append(done)
            for loop, futures in by_loop.items():  # one wake-up of each loop, however many requests it holds
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                    loop.call_soon_threadsafe(_settle, futures, failure)

    def _take(self) -> list[_Waiting]:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing)
            count = min(len(self._queue), self.max_group)
            return [self._queue.popleft() for _ in range(count)]


def _settle(futures: list[asyncio.Future[None]], failure: BaseException | None) -> None:
    for done in futures:
        if done.done():  # the request was cancelled (its client went away); the write stands
            continue
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)
