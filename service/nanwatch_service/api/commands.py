"""``GET /v1/runs/{run_id}/commands``: the job's command channel, a long poll.

The job keeps one such request open. It returns at once with the run's unacknowledged commands whose ids
the job did not list in ``known``, or, when there are none, as soon as one exists (a detector's, an
operator's through any replica, an alert's), or after ``wait`` seconds with none. The job applies each
command once (by id) and acknowledges it in its next step batch; until then the command stays pending,
and the replies to the job's step batches carry it too, so a job whose channel is down still gets it.
The channel takes the job's own token: a writer of the run's team.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from nanwatch_service.api.codec import respond
from nanwatch_service.api.deps import ERRORS, EngineDep, VisibleRunId, WriterRole

router = APIRouter(prefix="/v1/runs/{run_id}/commands", tags=["commands"])


@router.get("", dependencies=[WriterRole], responses=ERRORS)
async def wait_for_commands(
    run_id: VisibleRunId,
    request: Request,
    engine: EngineDep,
    wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for a command when none is pending")] = 25,
    known: Annotated[
        str | None, Query(max_length=4096, description="comma-separated ids of commands the job already has")
    ] = None,
) -> Response:
    """The run's pending commands the job does not know yet: at once if there are some, else as soon as
    one exists, else an empty list after ``wait`` seconds."""
    ids = frozenset(filter(None, (known or "").split(",")))
    commands = await engine.wait_for_commands(run_id, known=ids, wait=wait)
    return respond(request, {"commands": commands})
