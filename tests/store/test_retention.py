"""Retention on SQLite and PostgreSQL: a run of a million steps keeps a bounded number of chunk rows, its
newest steps in full, one per ``every`` steps before them and every step around its events; a run not
seen for long is deleted with everything it had."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nanwatch.columns import StepColumns
from nanwatch_service import retention
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store
from nanwatch_service.store.base import IngestWrite, RunProgress
from nanwatch_service.store.retention import Retention, event_steps

SPEC = {"name": "long", "team": "t", "layers": [{"name": "d", "kind": "Dense", "activation": None, "params": 3}]}
RULES = Settings(retain_steps=10_000, retain_every=100, retain_around_events=20, retain_runs_s=0)
CHUNK = 500
EVENT_STEPS = (123_457, 500_003, 777_777)


def _columns(first: int, n: int) -> StepColumns:
    steps = np.arange(first, first + n, dtype=np.int64)
    loss = (1.0 / (1 + steps)).reshape(n, 1)
    return StepColumns(steps, ("loss",), loss, ("act_std",), loss.reshape(n, 1, 1).copy())


def _write(store: Store, run_id: str, first: int, n: int, now: float = 1.0) -> None:
    progress = RunProgress(now, first + n - 1, "ok", math.inf, n, 0, "a1")
    store.write_ingest([IngestWrite(run_id, "a1", now, _columns(first, n), progress)])


def _event(step: int) -> dict[str, Any]:
    return {
        "detector": "loss_spike",
        "severity": "warning",
        "layer": None,
        "state": "closed",
        "step": step,
        "first_step": step,
        "last_step": step + 3,
        "end_step": step + 8,
        "message": "m",
        "remedy": "r",
        "severity_steps": {"warning": step},
    }


def _rows(store: Store, run_id: str) -> int:
    return len(store.read_steps(run_id, start=None, end=None, attempt=None, after_seq=0, limit=10**7, fields=("step",)))


def _chunk_rows(store: Store, run_id: str) -> int:
    return sum(1 for _ in store._chunks(run_id, False, None, None, None))  # type: ignore[attr-defined]


def test_a_million_step_run_keeps_a_bounded_number_of_rows(store: Store) -> None:
    store.upsert_run("long", SPEC, 0.0)
    most_chunks, events = 0, list(EVENT_STEPS)
    for first in range(0, 1_000_000, CHUNK):
        _write(store, "long", first, CHUNK)
        if events and first + CHUNK > events[0]:  # the detectors find it as its steps arrive
            store.insert_event("long", _event(events.pop(0)))
        if first % (50 * CHUNK) == 0:
            retention.apply(store, RULES, now=1.0)
            most_chunks = max(most_chunks, _chunk_rows(store, "long"))
    retention.apply(store, RULES, now=1.0)

    # The newest 10,000 (+ a quarter before a pass) in chunks of 500, and the compacted history in chunks
    # of up to 10,000 records: never more than ~30 chunk rows, however long the run grows.
    assert most_chunks <= 30
    kept = store.read_steps("long", start=None, end=None, attempt=None, after_seq=0, limit=10**7, fields=("step",))
    steps = [row["record"]["step"] for row in kept]
    assert steps == sorted(steps) and [row["seq"] for row in kept] == sorted(row["seq"] for row in kept)
    assert steps[-10_000:] == list(range(990_000, 1_000_000))  # the newest in full
    old = [s for s in steps if s < 990_000]
    around = {s for e in EVENT_STEPS for p in (e, e + 3, e + 8) for s in range(p - 20, p + 21)}
    assert set(range(0, 990_000, 100)) <= set(old)  # one per 100 steps
    assert around <= set(old)  # every step around the events
    assert len(old) == len(set(range(0, 990_000, 100)) | around)
    assert len(steps) < 25_000


def test_an_events_neighbourhood_is_read_back_whole_with_its_values(store: Store) -> None:
    store.upsert_run("r", SPEC, 0.0)
    for first in range(0, 20_000, 1000):
        _write(store, "r", first, 1000)
    store.insert_event("r", _event(5_000))
    rules = Retention(2_000, 1000, 10, event_steps(store.list_events("r")))
    assert store.compact_history("r", rules) > 0
    rows = store.read_steps("r", start=4_990, end=5_018, attempt=None, after_seq=0, limit=100)
    assert [row["record"]["step"] for row in rows] == list(range(4_990, 5_019))
    assert all(row["record"]["loss"] == 1.0 / (1 + row["record"]["step"]) for row in rows)
    assert all(row["record"]["layers"]["act_std"] == [row["record"]["loss"]] for row in rows)
    between = store.read_steps("r", start=6_000, end=17_999, attempt=None, after_seq=0, limit=100)
    assert [row["record"]["step"] for row in between] == list(range(6_000, 18_000, 1000))
    assert store.compact_history("r", rules) == 0  # applying the rules again changes nothing
    old = set(range(0, 18_000, 1000)) | set(range(4_990, 5_019))  # one per 1000, and around the event's steps
    assert _rows(store, "r") == 2_000 + len(old)


def test_runs_not_seen_for_the_age_cap_are_deleted_with_their_history(store: Store) -> None:
    for run_id, seen in (("old", 100.0), ("recent", 9_000.0)):
        store.upsert_run(run_id, SPEC, seen)
        _write(store, run_id, 0, 10, now=seen)
        store.insert_event(run_id, _event(3))
        store.insert_command(run_id, {"id": f"c-{run_id}", "action": "halt", "reason": "x", "source": "operator",
                                      "step": 1, "at_step": 1, "created_at": seen})  # fmt: skip
    done = retention.apply(store, Settings(retain_runs_s=1_000.0, retain_steps=10), now=10_000.0)
    assert done.deleted_runs == ["old"]
    assert store.get_run("old") is None and _rows(store, "old") == 0
    assert store.list_events("old") == [] and store.active_halt("old") is None
    assert store.get_run("recent") is not None and _rows(store, "recent") == 10
