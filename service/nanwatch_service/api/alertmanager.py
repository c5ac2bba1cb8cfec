"""``POST /v1/alertmanager``: Alertmanager's webhook (payload version 4). Each new firing alert that carries
a ``run_id`` label halts that run, through the same idempotent path as an operator halt; every new
notification, firing or resolved, is recorded as an event of its run (see :mod:`nanwatch_service.alerts`).
The webhook is an operator's call: Alertmanager sends a token of every team (``*``) with the operator role."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nanwatch_service import alerts
from nanwatch_service.api.codec import read_message, respond
from nanwatch_service.api.deps import BODY_ERRORS, CallerDep, EngineDep, OperatorRole, SettingsDep
from nanwatch_service.api.schemas import ALERTMANAGER_BODY, request_body

router = APIRouter(tags=["alertmanager"])
_ERRORS = {code: answer for code, answer in BODY_ERRORS.items() if code != 404}


@router.post(
    "/v1/alertmanager",
    dependencies=[OperatorRole],
    responses={**_ERRORS, 422: {"description": "not a version 4 payload, or an alert lacks a field"}},
    openapi_extra=request_body(ALERTMANAGER_BODY, msgpack=False),
)
async def alertmanager_webhook(
    request: Request, engine: EngineDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Halt the runs named by new firing alerts, record every new notification; report what was done.

    The reply lists ``halted`` (with ``created`` false when the run's halt was already in force),
    ``recorded``, the number of ``duplicates`` (repeats this replica had handled) and ``skipped`` alerts
    (no valid ``run_id`` label, or an unknown run, or one of a team the token does not see). A payload that
    is not version 4, or an alert without ``status``, ``labels``, ``fingerprint`` or ``startsAt``, gets 422
    naming the field."""
    message = await read_message(request, settings.max_body_bytes)
    parsed = alerts.parse_notification(message, settings.limits)
    outcome = await alerts.handle(engine, request.app.state.alert_ledger, parsed, caller)
    return respond(request, outcome)
