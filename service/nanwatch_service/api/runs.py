"""``/v1/runs``: register runs, read their status, health and halt, and delete them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nanwatch import protocol
from nanwatch.vocabulary import RunStatus
from nanwatch_service.api.codec import read_message, respond
from nanwatch_service.api.deps import (
    BODY_ERRORS,
    ERRORS,
    AdminRole,
    CallerDep,
    EngineDep,
    ReaderRole,
    RunId,
    SettingsDep,
    VisibleRunId,
    WriterRole,
    words_of,
)
from nanwatch_service.api.schemas import RUN_BODY, request_body
from nanwatch_service.store.base import BIGGEST

router = APIRouter(prefix="/v1/runs", tags=["runs"])

if TYPE_CHECKING:
    StatusWord = RunStatus
else:
    StatusWord = words_of(RunStatus)


@router.put(
    "/{run_id}",
    dependencies=[WriterRole],
    responses={201: {"description": "registered"}, 200: {"description": "updated"}, **BODY_ERRORS},
    openapi_extra=request_body(RUN_BODY),
)
async def register_run(
    run_id: RunId, request: Request, engine: EngineDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Register a run or update it: name, team, framework, dtype policy, layer table, halt policy. The run
    belongs to the token's team (the registration's ``team`` counts only for a token of every team, or
    when no token is configured); a run id another team holds is 404."""
    message = await read_message(request, settings.max_body_bytes)
    spec = protocol.decode_run(message, settings.limits)
    view, created = await run_in_threadpool(engine.register, run_id, spec, caller)
    return respond(request, view, 201 if created else 200)


@router.get("", dependencies=[ReaderRole], responses={k: v for k, v in ERRORS.items() if k != 404})
async def list_runs(
    request: Request,
    engine: EngineDep,
    caller: CallerDep,
    status: StatusWord | None = None,
    team: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=BIGGEST)] = 0,
) -> Response:
    """The caller's team's runs (every team's for a token of every team or an admin), most recently
    active first; ``next_offset`` pages on."""
    if not caller.sees_every_team:
        if team not in (None, caller.team):
            return respond(request, {"runs": [], "next_offset": None})
        team = caller.team
    runs = await run_in_threadpool(engine.list_runs, status=status, team=team, limit=limit, offset=offset)
    next_offset = offset + len(runs) if len(runs) == limit else None
    return respond(request, {"runs": runs, "next_offset": next_offset})


@router.get("/{run_id}", dependencies=[ReaderRole], responses=ERRORS)
async def get_run(run_id: VisibleRunId, request: Request, engine: EngineDep) -> Response:
    """A run's status (running, halted, finished, stale), health, last step, forecast and halt."""
    return respond(request, await run_in_threadpool(engine.run_view, run_id))


@router.delete("/{run_id}", dependencies=[AdminRole], status_code=204, responses=ERRORS)
async def delete_run(run_id: VisibleRunId, engine: EngineDep) -> Response:
    """Delete a run with its history, events and commands (admins only)."""
    await run_in_threadpool(engine.delete, run_id)
    return Response(status_code=204)
