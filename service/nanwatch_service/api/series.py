"""``GET /v1/runs/{run_id}/series``: a run's history downsampled for plotting (what the run page draws).

Each field comes back as a line of at most ``2 * points`` finite points (the smallest and largest value
of each of ``points`` step ranges) and the steps where NaN, +Inf and -Inf were seen, so that a plot of
100,000 steps is a few kilobytes and still shows every spike and every non-finite value.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nanwatch_service.api import errors
from nanwatch_service.api.codec import respond
from nanwatch_service.api.deps import ERRORS, EngineDep, ReaderRole, VisibleRunId
from nanwatch_service.api.schemas import list_pattern
from nanwatch_service.detectors.history import FORECAST_FIELDS, steps_to_nonfinite
from nanwatch_service.detectors.run_info import RunInfo
from nanwatch_service.downsample import downsample, top_layers
from nanwatch_service.engine import Engine, UnknownRun
from nanwatch_service.store.base import BIGGEST, SERIES_FIELDS, Column

router = APIRouter(prefix="/v1/runs/{run_id}/series", tags=["series"])

FORECAST: Final = "steps_to_nonfinite"
FIELDS: Final = (*SERIES_FIELDS, FORECAST)


@router.get("", dependencies=[ReaderRole], responses=ERRORS)
async def read_series(
    run_id: VisibleRunId,
    request: Request,
    engine: EngineDep,
    fields: Annotated[
        str,
        Query(
            description=f"comma-separated, from: {', '.join(FIELDS)}",
            json_schema_extra={"pattern": list_pattern(FIELDS)},  # documented; checked below, by name
        ),
    ] = "loss,grad_norm",
    points: Annotated[int, Query(ge=1, le=20_000, description="step ranges to cut the history into")] = 1000,
    start: Annotated[int | None, Query(ge=0, le=BIGGEST, description="first step (inclusive)")] = None,
    end: Annotated[int | None, Query(ge=0, le=BIGGEST, description="last step (inclusive)")] = None,
    attempt: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    top: Annotated[
        int | None, Query(ge=1, le=1024, description="per-layer fields: only the k layers most worth plotting")
    ] = None,
) -> Response:
    """Per field ``{steps, values, nan, inf, -inf}``; a per-layer field (``layers.grad_norm``) is a list of
    those, one per layer, with the layer's ``layer`` index, ``name``, compute ``dtype`` and its largest
    finite value ``limit``. With ``top`` only the layers that turned non-finite first, then those with the
    largest values. ``steps_to_nonfinite`` is the detectors' forecast after each step, recomputed from the
    history; steps where nothing was heading for a non-finite value (+Inf) are left out of its line."""
    chosen = _parse_fields(fields)
    query = {"points": points, "start": start, "end": end, "attempt": attempt, "top": top}
    return respond(request, await run_in_threadpool(_series, engine, run_id, chosen, query))


def _parse_fields(fields: str) -> tuple[str, ...]:
    """The fields asked for, each once; a 422 naming the unknown ones and the choices."""
    chosen = tuple(dict.fromkeys(fields.split(",")))
    unknown = [f for f in chosen if f not in FIELDS]
    if unknown:
        message = f"unknown field(s) {', '.join(unknown)}; choose from {', '.join(FIELDS)}"
        raise HTTPException(422, detail=errors.detail("fields", message, where="query"))
    return chosen


def _series(engine: Engine, run_id: str, fields: tuple[str, ...], query: dict[str, Any]) -> dict[str, Any]:
    row = engine.store.get_run(run_id)
    if row is None:
        raise UnknownRun(run_id)
    spec, start = row["spec"], query["start"]
    stored = [f for f in fields if f != FORECAST]
    if FORECAST in fields:
        stored = list(dict.fromkeys([*stored, *FORECAST_FIELDS]))
        # the forecast at ``start`` looks back over the window before it
        start = None if start is None else max(0, start - engine.settings.window)
    width = len(spec.get("layers", []))  # older chunks over another layer table read their statistics absent
    steps, columns = engine.store.read_series(
        run_id, stored, start=start, end=query["end"], attempt=query["attempt"], n_layers=width
    )
    if FORECAST in fields:
        forecast = steps_to_nonfinite(spec, steps, columns, engine.settings.window)
        columns[FORECAST] = (forecast, np.isfinite(forecast))
    keep = np.ones(len(steps), dtype=bool) if query["start"] is None else steps >= query["start"]
    steps = steps[keep]
    lines = {f: _lines(RunInfo(spec), steps, _rows(columns[f], keep), query) for f in fields}
    span = {"first_step": int(steps.min()), "last_step": int(steps.max())} if len(steps) else {}
    return {"run_id": run_id, "points": query["points"], "rows": len(steps), **span, "series": lines}


def _rows(column: Column, keep: np.ndarray) -> Column:
    values, present = column
    return values[keep], present[keep]


def _lines(run: RunInfo, steps: np.ndarray, column: Column, query: dict[str, Any]) -> Any:
    values, present = column
    if values.ndim == 1:
        return downsample(steps, values, present, query["points"]).to_json()
    top = query["top"] or values.shape[1]
    return [
        {
            "layer": i,
            "name": run.names[i],
            "dtype": run.act_dtypes[i],
            "limit": float(run.act_limits[i]),
            **downsample(steps, values[:, i], present, query["points"]).to_json(),
        }
        for i in top_layers(values, present, top)
    ]
