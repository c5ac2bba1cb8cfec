"""``POST /v1/runs/{run_id}/halt``: an operator stops a run at its next batch end."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from nanwatch import protocol
from nanwatch_service.api.codec import error_detail, read_message, respond
from nanwatch_service.api.deps import EngineDep, RunId, SettingsDep, Writer
from nanwatch_service.api.schemas import HALT_BODY, request_body

router = APIRouter(prefix="/v1/runs/{run_id}/halt", tags=["halt"])


@router.post(
    "",
    dependencies=[Writer],
    responses={202: {"description": "halt queued"}, 200: {"description": "a halt was already in force"}},
    openapi_extra=request_body(HALT_BODY),
)
async def halt_run(run_id: RunId, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Queue a halt for the job's next ingest reply. Idempotent: while a halt is pending or the run is
    halted, the same command comes back (200) and nothing new is queued."""
    message = await read_message(request, settings.max_body_bytes)
    reason = _reason(message)
    command, created = await engine.halt(run_id, reason=reason, source="operator")
    return respond(request, {"command": command, "created": created}, 202 if created else 200)


def _reason(message: object) -> str:
    if not isinstance(message, dict) or set(message) - {"reason"}:
        exc = protocol.ProtocolError("reason", 'expected {"reason": "..."}')
        raise HTTPException(422, detail=error_detail(exc))
    reason = message.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 4096:
        exc = protocol.ProtocolError("reason", "a non-empty string of at most 4096 characters is required")
        raise HTTPException(422, detail=error_detail(exc))
    return reason.strip()
