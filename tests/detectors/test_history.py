"""The forecast recomputed over a stored history equals the one the pipeline held after each step."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from nanwatch import protocol
from nanwatch.columns import StepColumns
from nanwatch_service.detectors import Pipeline
from nanwatch_service.detectors.history import FORECAST_FIELDS, steps_to_nonfinite
from nanwatch_service.store.base import IngestWrite
from nanwatch_service.store.sqlite import SqliteStore

TRACES = Path(__file__).with_name("traces")


def test_forecast_history_matches_the_pipeline_step_by_step_on_a_real_diverging_run(tmp_path: Path) -> None:
    trace = protocol.loads(gzip.decompress((TRACES / "S5.json.gz").read_bytes()), protocol.JSON)
    run = protocol.decode_run(trace["run"])
    records = [protocol.decode_record(r, n_layers=len(run["layers"])) for r in trace["records"]]
    pipeline = Pipeline(run)
    live = []
    for record in records:
        pipeline.process([record])
        live.append(pipeline.steps_to_nonfinite)
    store = SqliteStore(tmp_path / "h.db")
    try:
        store.upsert_run("s5", run, 0.0)
        for i in range(0, len(records), 7):  # a few chunks, as a job's requests store them
            columns = StepColumns.from_records(records[i : i + 7], len(run["layers"]))
            store.write_ingest([IngestWrite("s5", "a", 0.0, columns)])
        steps, columns = store.read_series("s5", FORECAST_FIELDS, start=None, end=None)
    finally:
        store.close()
    recomputed = steps_to_nonfinite(run, steps, columns)
    assert recomputed.tolist() == live
    assert any(math.isfinite(v) and v > 0 for v in live) and live[-1] == 0.0  # a forecast, then the NaN


def test_no_history_has_no_forecast() -> None:
    run = protocol.decode_run({"name": "empty", "layers": []})
    empty = (np.zeros(0), np.zeros(0, dtype=bool))
    columns = {f: (np.zeros((0, 0)), empty[1]) if f.startswith("layers.") else empty for f in FORECAST_FIELDS}
    assert steps_to_nonfinite(run, np.zeros(0, dtype=np.int64), columns).shape == (0,)
