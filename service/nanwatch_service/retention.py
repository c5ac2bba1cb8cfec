"""Retention: what keeps a long-lived service's database bounded, applied every ``retention_interval_s``.

- A run not seen for ``retain_runs_s`` (finished, halted, or silent that long) is deleted with its history,
  events and commands.
- A run holding more than ``retain_steps`` records (plus a quarter, so that a pass has something to do)
  in chunks not compacted yet has its older records downsampled: one kept per ``retain_every`` steps, and
  every record within ``retain_around_events`` steps of its events' steps (see ``store.retention``).

Every replica applies the rules; on a shared store two replicas rewriting the same chunks at once leave it
to whichever commits first. A pass works in the store's thread pool and writes one group of chunks per
transaction, so ingest commits wait at most one group's rewrite.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from nanwatch_service.engine import Engine
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, StoreError
from nanwatch_service.store.retention import Retention, event_steps

_log = logging.getLogger("nanwatch.service")
EXPIRED_PER_PASS = 1000
"""Most runs one pass deletes (the next pass goes on)."""


@dataclass
class RetentionPass:
    """What one pass did."""

    deleted_runs: list[str] = field(default_factory=list)
    compacted_runs: list[str] = field(default_factory=list)
    chunks_removed: int = 0


async def keep_bounded(engine: Engine) -> None:
    """Apply the retention rules every ``retention_interval_s`` (never when it is 0), until cancelled."""
    interval = engine.settings.retention_interval_s
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            done = await run_in_threadpool(apply, engine.store, engine.settings, engine.clock())
        except StoreError as exc:
            _log.warning("nanwatch: retention pass failed, the next one retries: %s", exc)
            continue
        except Exception:  # a bug must not end retention for the life of the process
            _log.exception("nanwatch: retention pass failed, the next one retries")
            continue
        for run_id in done.deleted_runs:
            engine.forget(run_id)


def apply(store: Store, settings: Settings, now: float) -> RetentionPass:
    """One pass of the rules over every run."""
    done = RetentionPass()
    if settings.retain_runs_s > 0:
        for run_id in store.runs_seen_before(now - settings.retain_runs_s, EXPIRED_PER_PASS):
            if store.delete_run(run_id):
                done.deleted_runs.append(run_id)
    threshold = settings.retain_steps + settings.retain_steps // 4
    for run_id in store.runs_to_compact(threshold):
        done.chunks_removed += store.compact_history(run_id, rules_for(store, settings, run_id))
        done.compacted_runs.append(run_id)
    return done


def rules_for(store: Store, settings: Settings, run_id: str) -> Retention:
    """The rules for one run: the settings, and the steps of its events."""
    events = []
    after = 0
    while page := store.list_events(run_id, after_id=after, limit=1000):
        events += page
        after = page[-1]["id"]
    return Retention(settings.retain_steps, settings.retain_every, settings.retain_around_events, event_steps(events))
