"""The Store contract, held by SQLite and PostgreSQL alike (real databases, no mocks)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from nanwatch.columns import StepColumns
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, open_store
from nanwatch_service.store.base import IngestWrite, RunProgress
from nanwatch_service.store.sql import pack

SPEC = {"name": "r", "team": "t", "layers": [{"name": "d", "kind": "Dense", "activation": None, "params": 3}]}


def _record(step: int, loss: float) -> dict[str, Any]:
    return {"step": step, "loss": loss, "layers": {"act_std": [loss]}}


def test_runs_register_once_and_update_in_place(store: Store) -> None:
    assert store.upsert_run("r", SPEC, 1.0) is True
    assert store.upsert_run("r", {**SPEC, "team": "u"}, 2.0) is False
    row = store.get_run("r")
    assert row is not None and row["team"] == "u" and row["created_at"] == 1.0 and row["spec"]["team"] == "u"
    assert row["steps_to_nonfinite"] == math.inf and row["status"] == "running"
    assert store.get_run("nope") is None


def _write(run_id: str, attempt: str, records: list[dict[str, Any]], now: float, **progress: Any) -> IngestWrite:
    fields = {"last_seen": now, "last_step": records[-1]["step"] if records else None, "health": "ok"}
    fields |= {"steps_to_nonfinite": math.inf, "stored": len(records), "dropped": 0, "attempt": attempt, **progress}
    return IngestWrite(run_id, attempt, now, StepColumns.from_records(records, 1), RunProgress(**fields))


def _read(store: Store, **query: Any) -> list[dict[str, Any]]:
    return store.read_steps("r", **{"start": None, "end": None, "attempt": None, "after_seq": 0, "limit": 10, **query})


def test_steps_keep_nonfinite_floats_and_every_attempt(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    store.write_ingest([_write("r", "a", [_record(0, math.nan), _record(1, -math.inf)], 2.0)])
    store.write_ingest([_write("r", "b", [_record(1, -0.0)], 3.0)])
    rows = _read(store)
    assert [(r["attempt"], r["record"]["step"]) for r in rows] == [("a", 0), ("a", 1), ("b", 1)]
    assert math.isnan(rows[0]["record"]["loss"]) and rows[1]["record"]["loss"] == -math.inf
    assert math.copysign(1.0, rows[2]["record"]["layers"]["act_std"][0]) == -1.0
    assert [chunk.attempt for chunk in store.recent_chunks("r", 1)] == ["b"]
    assert [chunk.columns.n for chunk in store.recent_chunks("r", 2)] == [2, 1]


def test_history_pages_by_seq_across_chunks_and_selects_fields_and_ranges(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    store.write_ingest([_write("r", "a", [_record(s, float(s)) for s in range(i, i + 3)], 2.0) for i in (0, 3, 6)])
    first = _read(store, limit=4)
    rest = _read(store, after_seq=first[-1]["seq"], limit=100)
    assert [r["record"]["step"] for r in first + rest] == list(range(9))
    seqs = [r["seq"] for r in first + rest]
    assert seqs == sorted(set(seqs))
    picked = _read(store, start=2, end=6, fields=("loss",))
    assert [r["record"] for r in picked] == [{"step": s, "loss": float(s)} for s in range(2, 7)]
    steps, series = store.read_series("r", ["loss", "layers.act_std"], start=4, end=None)
    assert steps.tolist() == [4, 5, 6, 7, 8] and series["loss"][0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert series["layers.act_std"][0].shape == (5, 1)


def test_huge_integers_in_a_query_do_not_overflow_the_database(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    store.write_ingest([_write("r", "a", [_record(0, 1.0)], 2.0)])
    assert _read(store, after_seq=2**70) == [] and _read(store, start=2**80) == []
    assert len(_read(store, end=2**90)) == 1
    assert store.list_events("r", after_id=2**70) == []


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    with pytest.raises(RuntimeError), store.transaction():
        store.write_ingest([_write("r", "a", [_record(0, 1.0)], 2.0)])
        raise RuntimeError("crash between writes")
    assert _read(store) == []
    row = store.get_run("r")
    assert row is not None and row["records"] == 0 and row["last_step"] is None


def test_a_store_of_per_step_rows_is_moved_into_chunks_when_opened(tmp_path: Path) -> None:
    legacy = sqlite3.connect(tmp_path / "old.db")
    legacy.execute(
        "CREATE TABLE steps (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, attempt TEXT NOT NULL,"
        " step INTEGER NOT NULL, received_at REAL NOT NULL, record BLOB NOT NULL)"
    )
    rows = [("r", "a", s, 1.0 if s < 3 else 2.0, pack(_record(s, float(s)))) for s in range(5)]
    legacy.executemany("INSERT INTO steps (run_id, attempt, step, received_at, record) VALUES (?, ?, ?, ?, ?)", rows)
    legacy.commit()
    legacy.close()
    store = open_store(Settings(db=str(tmp_path / "old.db")))
    try:
        assert [r["record"]["loss"] for r in _read(store)] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert [chunk.columns.n for chunk in store.recent_chunks("r", 5)] == [3, 2]
    finally:
        store.close()


def test_events_are_stored_updated_and_filtered(store: Store) -> None:
    event = {
        "detector": "nonfinite",
        "severity": "critical",
        "layer": "d",
        "state": "open",
        "first_step": 3,
        "last_step": 3,
        "end_step": None,
        "value": math.nan,
        "message": "m",
        "remedy": "r",
    }
    event_id = store.insert_event("r", event)
    store.update_event("r", event_id, {**event, "state": "closed", "end_step": 9})
    [stored] = store.list_events("r")
    assert stored["id"] == event_id and stored["state"] == "closed" and stored["end_step"] == 9
    assert math.isnan(stored["value"])
    assert store.list_events("r", state="open") == []


def test_commands_stay_pending_until_the_first_acknowledgement(store: Store) -> None:
    command = {
        "id": "c1",
        "action": "halt",
        "reason": "x",
        "source": "operator",
        "step": 1,
        "at_step": 2,
        "created_at": 10.0,
    }
    store.insert_command("r", command)
    store.insert_command("other", {**command, "id": "c2", "created_at": 11.0})
    assert [c["id"] for c in store.pending_commands("r")] == ["c1"]
    assert [(c["run_id"], c["id"]) for c in store.unacked_commands()] == [("r", "c1"), ("other", "c2")]
    acked = store.ack_command("r", "c1", 2, 51.0)
    assert acked is not None and acked["acked_step"] == 2
    assert store.ack_command("r", "c1", 9, 52.0)["acked_step"] == 2  # type: ignore[index]
    assert store.pending_commands("r") == [] and store.active_halt("r")["id"] == "c1"  # type: ignore[index]
    assert store.ack_command("r", "unknown", 2, 51.0) is None


def test_record_counts_add_up_and_the_drop_count_only_rises(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    store.write_ingest([_write("r", "a", [_record(0, 1.0)] * 5, 2.0, dropped=3)])
    store.write_ingest([_write("r", "a", [_record(1, 1.0)] * 2, 3.0, dropped=1)])  # an older counter, late
    row = store.get_run("r")
    assert row is not None and row["records"] == 7 and row["dropped"] == 3 and row["last_step"] == 1
