"""``/v1/runs``: register runs and read their status, health and halt."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nanwatch import protocol
from nanwatch_service.api.codec import error_detail, read_message, respond
from nanwatch_service.api.deps import EngineDep, RunId, SettingsDep, Writer
from nanwatch_service.api.schemas import RUN_BODY, request_body

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.put(
    "/{run_id}",
    dependencies=[Writer],
    responses={201: {"description": "registered"}, 200: {"description": "updated"}},
    openapi_extra=request_body(RUN_BODY),
)
async def register_run(run_id: RunId, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Register a run or update it: name, team, framework, dtype policy, layer table, halt policy."""
    message = await read_message(request, settings.max_body_bytes)
    try:
        spec = protocol.decode_run(message)
    except protocol.ProtocolError as exc:
        raise HTTPException(422, detail=error_detail(exc)) from None
    view, created = await run_in_threadpool(engine.register, run_id, spec)
    return respond(request, view, 201 if created else 200)


@router.get("")
async def list_runs(
    request: Request,
    engine: EngineDep,
    status: Literal["running", "halted", "finished", "stale"] | None = None,
    team: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Runs, most recently active first; ``next_offset`` pages on."""
    runs = await run_in_threadpool(engine.list_runs, status=status, team=team, limit=limit, offset=offset)
    next_offset = offset + len(runs) if len(runs) == limit else None
    return respond(request, {"runs": runs, "next_offset": next_offset})


@router.get("/{run_id}")
async def get_run(run_id: RunId, request: Request, engine: EngineDep) -> Response:
    """A run's status (running, halted, finished, stale), health, last step, forecast and halt."""
    return respond(request, await run_in_threadpool(engine.run_view, run_id))
