"""``POST /v1/alertmanager``: Alertmanager's webhook (payload version 4). Each firing alert that carries
a ``run_id`` label halts that run, through the same idempotent path as an operator halt."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from nanwatch import protocol
from nanwatch_service.api.codec import error_detail, read_message, respond
from nanwatch_service.api.deps import EngineDep, SettingsDep, Writer
from nanwatch_service.engine import Engine, UnknownRun

router = APIRouter(tags=["alertmanager"])


@router.post("/v1/alertmanager", dependencies=[Writer])
async def alertmanager_webhook(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Halt every run named by a firing alert; report which were halted and which were skipped."""
    message = await read_message(request, settings.max_body_bytes)
    alerts = _firing_alerts(message)
    outcome = await _halt_all(engine, alerts)
    return respond(request, outcome)


def _firing_alerts(message: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict) or str(message.get("version")) != "4":
        raise _invalid("version", 'expected an Alertmanager webhook payload with "version": "4"')
    alerts = message.get("alerts")
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise _invalid("alerts", "expected an array of alert objects")
    return [a for a in alerts if a.get("status", message.get("status")) == "firing"]


async def _halt_all(engine: Engine, alerts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    halted: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for alert in alerts:
        labels = alert.get("labels") or {}
        run_id = labels.get("run_id")
        if not isinstance(run_id, str) or not protocol.RUN_ID_PATTERN.fullmatch(run_id):
            skipped.append({"alertname": labels.get("alertname"), "why": "no valid run_id label"})
            continue
        try:
            command, created = await engine.halt(run_id, reason=_reason(alert), source="alertmanager")
        except UnknownRun:
            skipped.append({"run_id": run_id, "why": "unknown run"})
            continue
        halted.append({"run_id": run_id, "command_id": command["id"], "created": created})
    return {"halted": halted, "skipped": skipped}


def _reason(alert: dict[str, Any]) -> str:
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    text = annotations.get("summary") or annotations.get("description") or ""
    return f"alert {labels.get('alertname', 'unnamed')}: {text}".strip().rstrip(":")[:4096]


def _invalid(field: str, message: str) -> HTTPException:
    return HTTPException(422, detail=error_detail(protocol.ProtocolError(field, message)))
