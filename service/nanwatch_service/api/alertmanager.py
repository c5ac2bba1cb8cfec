"""``POST /v1/alertmanager``: Alertmanager's webhook (payload version 4). Each new firing alert that carries
a ``run_id`` label halts that run, through the same idempotent path as an operator halt; every new
notification, firing or resolved, is recorded as an event of its run (see :mod:`nanwatch_service.alerts`)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from nanwatch import protocol
from nanwatch_service import alerts
from nanwatch_service.api.codec import error_detail, read_message, respond
from nanwatch_service.api.deps import EngineDep, SettingsDep, WebhookCaller

router = APIRouter(tags=["alertmanager"])


@router.post("/v1/alertmanager", dependencies=[WebhookCaller])
async def alertmanager_webhook(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Halt the runs named by new firing alerts, record every new notification; report what was done.

    The reply lists ``halted`` (with ``created`` false when the run's halt was already in force),
    ``recorded``, the number of ``duplicates`` (repeats this replica had handled) and ``skipped`` alerts
    (no valid ``run_id`` label, or an unknown run). A payload that is not version 4, or an alert without
    ``status``, ``labels``, ``fingerprint`` or ``startsAt``, gets 422 naming the field."""
    message = await read_message(request, settings.max_body_bytes)
    try:
        parsed = alerts.parse_notification(message)
    except protocol.ProtocolError as exc:
        raise HTTPException(422, detail=error_detail(exc)) from None
    outcome = await alerts.handle(engine, request.app.state.alert_ledger, parsed)
    return respond(request, outcome)
