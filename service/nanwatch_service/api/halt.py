"""``POST /v1/runs/{run_id}/halt``: an operator stops a run at its next batch end."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nanwatch import protocol
from nanwatch_service.api.codec import read_message, respond
from nanwatch_service.api.deps import BODY_ERRORS, CallerDep, EngineDep, OperatorRole, SettingsDep, VisibleRunId
from nanwatch_service.api.schemas import HALT_BODY, request_body

router = APIRouter(prefix="/v1/runs/{run_id}/halt", tags=["halt"])


@router.post(
    "",
    dependencies=[OperatorRole],
    responses={202: {"description": "halt queued"}, 200: {"description": "a halt was already in force"}, **BODY_ERRORS},
    openapi_extra=request_body(HALT_BODY),
)
async def halt_run(
    run_id: VisibleRunId, request: Request, engine: EngineDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Queue a halt for the job's next ingest reply; the command records the token's name (``sent_by``).
    Idempotent: while a halt is pending or the run is halted, the same command comes back (200) and
    nothing new is queued."""
    message = await read_message(request, settings.max_body_bytes)
    reason = _reason(message, settings.max_text_chars)
    command, created = await engine.halt(run_id, reason=reason, source="operator", sent_by=caller.name)
    return respond(request, {"command": command, "created": created}, 202 if created else 200)


def _reason(message: object, max_chars: int) -> str:
    if not isinstance(message, dict) or set(message) != {"reason"}:
        raise protocol.ProtocolError("reason", 'expected {"reason": "..."}')
    reason = message["reason"]
    if not isinstance(reason, str) or not reason:
        raise protocol.ProtocolError("reason", "a non-empty string is required")
    if len(reason) > max_chars:
        raise protocol.ProtocolError("reason", f"longer than {max_chars} characters", "text_chars")
    return reason.strip() or reason
