"""``/v1/runs/{run_id}/events``: the findings, one per episode of a condition."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nanwatch.vocabulary import EventState
from nanwatch_service.api.codec import respond
from nanwatch_service.api.deps import ERRORS, EngineDep, ReaderRole, VisibleRunId, words_of
from nanwatch_service.detectors import Severity
from nanwatch_service.store.base import BIGGEST

router = APIRouter(prefix="/v1/runs/{run_id}/events", tags=["events"])

if TYPE_CHECKING:
    StateWord = EventState
    SeverityWord = Severity
else:
    StateWord = words_of(EventState)
    SeverityWord = words_of(Severity)


@router.get("", dependencies=[ReaderRole], responses=ERRORS)
async def list_events(
    run_id: VisibleRunId,
    request: Request,
    engine: EngineDep,
    state: StateWord | None = None,
    severity: SeverityWord | None = None,
    detector: Annotated[str | None, Query(max_length=64)] = None,
    after_id: Annotated[int, Query(ge=0, le=BIGGEST)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """Each event: step, detector, severity, layer, value, threshold, message, remedy, forecast
    (``steps_to_nonfinite``), and the episode's ``first_step``/``last_step``/``end_step``."""
    events = await run_in_threadpool(
        engine.store.list_events,
        run_id,
        state=state,
        severity=severity,
        detector=detector,
        after_id=after_id,
        limit=limit,
    )
    return respond(request, {"run_id": run_id, "events": events})
