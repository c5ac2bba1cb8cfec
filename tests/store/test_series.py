"""``Store.read_series``: a run's history as columns, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nanwatch.columns import StepColumns
from nanwatch_service.store import Store
from nanwatch_service.store.base import IngestWrite

SPEC = {"name": "r", "layers": [{"name": f"d{i}", "kind": "Dense", "activation": None, "params": 3} for i in range(2)]}


def _record(step: int, loss: float, **layers: list[float]) -> dict[str, Any]:
    return {"step": step, "loss": loss, "grad_norm": 1.0, "layers": layers}


def _ingest(into: Store, attempt: str, records: list[dict[str, Any]], now: float = 1.0) -> None:
    into.write_ingest([IngestWrite("r", attempt, now, StepColumns.from_records(records, 2))])


def test_series_are_columns_with_nan_and_inf_kept_and_absence_told_apart(store: Store) -> None:
    store.upsert_run("r", SPEC, 0.0)
    _ingest(store, "a1", [_record(0, 1.0, grad_norm=[0.5, 0.25], act_max_abs=[3.0, 4.0])])
    _ingest(store, "a1", [_record(1, math.nan, grad_norm=[math.inf, -math.inf]), _record(2, math.inf)])
    fields = ["loss", "lr", "layers.grad_norm", "layers.act_max_abs"]
    steps, columns = store.read_series("r", fields, start=None, end=None)
    assert steps.dtype == np.int64 and steps.tolist() == [0, 1, 2]
    loss, present = columns["loss"]
    assert loss[0] == 1.0 and math.isnan(loss[1]) and loss[2] == math.inf and present.all()
    assert np.isnan(columns["lr"][0]).all() and not columns["lr"][1].any()
    grads, present = columns["layers.grad_norm"]
    assert grads.shape == (3, 2) and grads[1].tolist() == [math.inf, -math.inf]
    assert present.tolist() == [True, True, False] and np.isnan(grads[2]).all()
    acts, present = columns["layers.act_max_abs"]
    assert acts[0].tolist() == [3.0, 4.0] and present.tolist() == [True, False, False]  # a light step: not sent


def test_series_select_a_step_range_and_an_attempt_in_arrival_order(store: Store) -> None:
    store.upsert_run("r", SPEC, 0.0)
    _ingest(store, "first", [_record(s, 1.0) for s in range(10)])
    _ingest(store, "second", [_record(s, 2.0) for s in range(5, 8)], now=2.0)
    steps, columns = store.read_series("r", ["loss"], start=6, end=8)
    assert steps.tolist() == [6, 7, 8, 6, 7] and columns["loss"][0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]
    steps, _ = store.read_series("r", ["loss"], start=None, end=None, attempt="second")
    assert steps.tolist() == [5, 6, 7]


def test_series_of_an_unknown_run_are_empty(store: Store) -> None:
    steps, columns = store.read_series("nobody", ["loss", "layers.grad_norm"], start=None, end=None)
    assert steps.shape == (0,) and columns["loss"][0].shape == (0,) and columns["layers.grad_norm"][0].shape[0] == 0
