"""``/v1/runs/{run_id}/steps``: ingest step batches (the hot path) and read the history back."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nanwatch import protocol
from nanwatch_service.api.codec import error_detail, read_message, respond
from nanwatch_service.api.deps import EngineDep, RunId, SettingsDep, Writer
from nanwatch_service.api.schemas import BATCH_BODY, request_body

router = APIRouter(prefix="/v1/runs/{run_id}/steps", tags=["steps"])

_RECORD_FIELDS = ("step", "skipped", "layers", *protocol.SCALAR_FIELDS)


@router.post("", dependencies=[Writer], openapi_extra=request_body(BATCH_BODY))
async def ingest_steps(run_id: RunId, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Store a batch of step records (protocol 2 columns, or protocol 1 records); the reply carries
    ``accepted`` and the run's pending commands, and leaves once the batch is committed."""
    started = time.perf_counter()
    message = await read_message(request, settings.max_body_bytes)
    try:
        reply = await engine.ingest(run_id, message)
    except protocol.ProtocolError as exc:
        raise HTTPException(422, detail=error_detail(exc)) from None
    request.app.state.metrics.observe_ingest(time.perf_counter() - started)
    return respond(request, reply)


@router.get("")
async def read_steps(
    run_id: RunId,
    request: Request,
    engine: EngineDep,
    start: Annotated[int | None, Query(ge=0, description="first step (inclusive)")] = None,
    end: Annotated[int | None, Query(ge=0, description="last step (inclusive)")] = None,
    attempt: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    fields: Annotated[str | None, Query(description="comma-separated record fields, e.g. loss,grad_norm")] = None,
    every: Annotated[int, Query(ge=1, le=10_000, description="downsample: keep every n-th record")] = 1,
    after_seq: Annotated[int, Query(ge=0, description="page on from this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """History in arrival order. Each row has ``seq`` and ``attempt``, so a resumed job's re-sent steps
    are told apart; ``next_after_seq`` pages on."""
    chosen = _parse_fields(fields)
    await run_in_threadpool(engine.run_view, run_id)  # 404 for an unknown run
    rows = await run_in_threadpool(
        engine.store.read_steps,
        run_id,
        start=start,
        end=end,
        attempt=attempt,
        after_seq=after_seq,
        limit=limit * every,
        fields=chosen,
    )
    next_after = rows[-1]["seq"] if len(rows) == limit * every else None
    steps = [_project(row) for row in rows[::every]]
    return respond(request, {"run_id": run_id, "steps": steps, "next_after_seq": next_after})


def _parse_fields(fields: str | None) -> tuple[str, ...] | None:
    if fields is None:
        return None
    chosen = tuple(f.strip() for f in fields.split(",") if f.strip())
    unknown = [f for f in chosen if f not in _RECORD_FIELDS]
    if unknown:
        detail = f"unknown field(s) {', '.join(unknown)}; choose from {', '.join(_RECORD_FIELDS)}"
        raise HTTPException(422, detail=[{"loc": ["query", "fields"], "field": "fields", "msg": detail}])
    return chosen


def _project(row: dict[str, Any]) -> dict[str, Any]:
    return {"seq": row["seq"], "attempt": row["attempt"], "received_at": row["received_at"], **row["record"]}
