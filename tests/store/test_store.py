"""The Store contract, held by SQLite and PostgreSQL alike (real databases, no mocks)."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, open_store

PG_URL = os.environ.get("NANWATCH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL database, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"nw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(Settings(db=str(tmp_path / "store.db")))
    else:
        opened = open_store(Settings(database_url=request.getfixturevalue("pg_url")))
    try:
        yield opened
    finally:
        opened.close()


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


def test_steps_keep_nonfinite_floats_and_every_attempt(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    store.insert_steps("r", "a", [_record(0, math.nan), _record(1, -math.inf)], 2.0)
    store.insert_steps("r", "b", [_record(1, -0.0)], 3.0)
    rows = store.read_steps("r", start=None, end=None, attempt=None, after_seq=0, limit=10)
    assert [(r["attempt"], r["record"]["step"]) for r in rows] == [("a", 0), ("a", 1), ("b", 1)]
    assert math.isnan(rows[0]["record"]["loss"]) and rows[1]["record"]["loss"] == -math.inf
    assert math.copysign(1.0, rows[2]["record"]["layers"]["act_std"][0]) == -1.0
    assert [r["step"] for r in store.recent_records("r", 2)] == [1, 1]


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    with pytest.raises(RuntimeError), store.transaction():
        store.insert_steps("r", "a", [_record(0, 1.0)], 2.0)
        store.update_run("r", last_step=0, records=1)
        raise RuntimeError("crash between writes")
    assert store.read_steps("r", start=None, end=None, attempt=None, after_seq=0, limit=10) == []
    row = store.get_run("r")
    assert row is not None and row["records"] == 0 and row["last_step"] is None


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


def test_commands_are_delivered_once_then_again_only_after_the_redelivery_delay(store: Store) -> None:
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
    assert [c["id"] for c in store.deliverable_commands("r", 11.0, 30.0)] == ["c1"]
    assert store.deliverable_commands("r", 12.0, 30.0) == []
    assert [c["id"] for c in store.deliverable_commands("r", 50.0, 30.0)] == ["c1"]
    acked = store.ack_command("r", "c1", 2, 51.0)
    assert acked is not None and acked["acked_step"] == 2
    assert store.deliverable_commands("r", 500.0, 30.0) == []
    assert store.ack_command("r", "unknown", 2, 51.0) is None


def test_record_counts_add_up_and_the_drop_count_only_rises(store: Store) -> None:
    store.upsert_run("r", SPEC, 1.0)
    store.count_records("r", stored=5, dropped=3)
    store.count_records("r", stored=2, dropped=1)  # an older client counter arriving late
    row = store.get_run("r")
    assert row is not None and row["records"] == 7 and row["dropped"] == 3
