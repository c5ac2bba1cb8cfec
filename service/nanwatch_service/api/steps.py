"""``/v1/runs/{run_id}/steps``: ingest step batches (the hot path) and read the history back."""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nanwatch import protocol
from nanwatch_service.api.codec import read_message, respond
from nanwatch_service.api.deps import (
    BODY_ERRORS,
    ERRORS,
    EngineDep,
    ReaderRole,
    SettingsDep,
    VisibleRun,
    VisibleRunId,
    WriterRole,
)
from nanwatch_service.api.schemas import BATCH_BODY, list_pattern, request_body
from nanwatch_service.store.base import BIGGEST
from nanwatch_service.store.rows import StepRow

router = APIRouter(prefix="/v1/runs/{run_id}/steps", tags=["steps"])

RECORD_FIELDS: Final = ("step", "skipped", "layers", *protocol.SCALAR_FIELDS)
FIELDS_PATTERN: Final = list_pattern(RECORD_FIELDS)


@router.post(
    "", dependencies=[WriterRole], responses=BODY_ERRORS, openapi_extra=request_body(BATCH_BODY, msgpack=False)
)
async def ingest_steps(run: VisibleRun, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Store a batch of step records; the reply carries ``accepted`` and the run's pending commands, and
    leaves once the batch is committed. JSON carries protocol 1 (records as maps); msgpack carries protocol
    2 (packed columns, what the client sends; see ``nanwatch.protocol``) or protocol 1."""
    started = time.perf_counter()
    message = await read_message(request, settings.max_body_bytes)
    if isinstance(message, dict) and message.get("protocol") == 2 and _is_json(request):
        raise protocol.ProtocolError("protocol", "protocol 2 carries packed arrays: send it as application/msgpack")
    reply = await engine.ingest(run, message)
    request.app.state.metrics.observe_ingest(time.perf_counter() - started)
    return respond(request, reply)


@router.get("", dependencies=[ReaderRole], responses=ERRORS)
async def read_steps(
    run_id: VisibleRunId,
    request: Request,
    engine: EngineDep,
    start: Annotated[int | None, Query(ge=0, le=BIGGEST, description="first step (inclusive)")] = None,
    end: Annotated[int | None, Query(ge=0, le=BIGGEST, description="last step (inclusive)")] = None,
    attempt: Annotated[str | None, Query(pattern=f"^{protocol.ATTEMPT_PATTERN.pattern}$")] = None,
    fields: Annotated[
        str | None, Query(pattern=FIELDS_PATTERN, description="comma-separated record fields, e.g. loss,grad_norm")
    ] = None,
    every: Annotated[int, Query(ge=1, le=10_000, description="downsample: keep every n-th record")] = 1,
    after_seq: Annotated[int, Query(ge=0, le=BIGGEST, description="page on from this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """History in arrival order. Each row has ``seq`` and ``attempt``, so a resumed job's re-sent steps
    are told apart; ``next_after_seq`` pages on. Records older than the run's newest ``NANWATCH_RETAIN_STEPS``
    are kept one per ``NANWATCH_RETAIN_EVERY`` steps, and in full around its events."""
    rows = await run_in_threadpool(
        engine.store.read_steps,
        run_id,
        start=start,
        end=end,
        attempt=attempt,
        after_seq=after_seq,
        limit=limit * every,
        fields=None if fields is None else tuple(fields.split(",")),
    )
    next_after = rows[-1]["seq"] if len(rows) == limit * every else None
    steps = [_project(row) for row in rows[::every]]
    return respond(request, {"run_id": run_id, "steps": steps, "next_after_seq": next_after})


def _is_json(request: Request) -> bool:
    return protocol.content_type_of(request.headers.get("content-type")) == protocol.JSON


def _project(row: StepRow) -> dict[str, Any]:
    return {"seq": row["seq"], "attempt": row["attempt"], "received_at": row["received_at"], **row["record"]}
