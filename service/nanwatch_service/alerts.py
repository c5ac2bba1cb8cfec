"""Alertmanager notifications (webhook payload version 4): check them, drop repeats, halt, record.

Alertmanager delivers at least once and repeats itself: every ``repeat_interval`` while an alert fires,
and a group's whole alert list whenever one alert of the group changes. An alert instance is its
``fingerprint`` (a hash of its labels) and ``startsAt`` (when this firing began): an alert that resolves
and fires again starts anew, and may halt again.

- A firing alert with a ``run_id`` label halts that run through :meth:`Engine.halt`, which is idempotent
  in the store (one halt in force per run), and is recorded as a closed ``alertmanager`` event of the run
  (severity ``info``: it never counts towards the run's health).
- A resolved alert is recorded the same way and halts nothing.
- A notification this replica has already handled, same fingerprint, ``startsAt`` and status, is counted
  as a duplicate and touches nothing. The ledger of handled notifications lives in memory, per replica,
  bounded: a repeat that reaches another replica, or this one after a restart, is recorded once more but
  still halts at most once, because the halt's idempotence lives in the store. Keeping the ledger in the
  store would cost a write per delivery to save an occasional duplicate record.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from starlette.concurrency import run_in_threadpool

from nanwatch import protocol
from nanwatch.vocabulary import EventState
from nanwatch_service.auth import ANONYMOUS, Caller
from nanwatch_service.detectors import Severity
from nanwatch_service.engine import Engine, UnknownRun

STATUSES: Final = ("firing", "resolved")
LEDGER_SIZE: Final = 10_000

AlertKey = tuple[str, str, str]


@dataclass(frozen=True)
class Alert:
    """One alert of a notification, with the fields nanwatch reads."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    fingerprint: str
    starts_at: str
    ends_at: str | None

    @property
    def key(self) -> AlertKey:
        """What makes two deliveries the same notification of the same alert."""
        return (self.fingerprint, self.starts_at, self.status)

    @property
    def name(self) -> str:
        """The alert's name (``alertname`` label)."""
        return self.labels.get("alertname", "unnamed")


def parse_notification(message: Any, limits: protocol.Limits = protocol.DEFAULT_LIMITS) -> list[Alert]:
    """The alerts of a webhook payload; :class:`protocol.ProtocolError` names the first wrong field. A label
    value may hold ``limits.name_chars`` characters, an annotation ``limits.text_chars``."""
    if not isinstance(message, dict) or message.get("version") != "4":
        raise protocol.ProtocolError("version", 'expected an Alertmanager webhook payload with "version": "4"')
    alerts = message.get("alerts")
    if not isinstance(alerts, list):
        raise protocol.ProtocolError("alerts", "expected an array of alert objects")
    return [_alert(alert, f"alerts[{i}]", limits) for i, alert in enumerate(alerts)]


def _alert(obj: Any, field: str, limits: protocol.Limits) -> Alert:
    if not isinstance(obj, dict):
        raise protocol.ProtocolError(field, "expected an alert object")
    if obj.get("status") not in STATUSES:
        raise protocol.ProtocolError(f"{field}.status", f"expected one of {list(STATUSES)}, got {obj.get('status')!r}")
    for key in ("fingerprint", "startsAt"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise protocol.ProtocolError(f"{field}.{key}", "expected a non-empty string")
    ends_at = obj.get("endsAt")
    if ends_at is not None and not isinstance(ends_at, str):
        raise protocol.ProtocolError(f"{field}.endsAt", "expected a string (a time)")
    return Alert(
        status=obj["status"],
        labels=_strings(obj.get("labels"), f"{field}.labels", limits.name_chars, "name_chars"),
        annotations=_strings(obj.get("annotations", {}), f"{field}.annotations", limits.text_chars, "text_chars"),
        fingerprint=obj["fingerprint"],
        starts_at=obj["startsAt"],
        ends_at=ends_at,
    )


def _strings(obj: Any, field: str, max_chars: int, limit: str) -> dict[str, str]:
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise protocol.ProtocolError(field, "expected an object of string values")
    for key, value in obj.items():
        if len(value) > max_chars:
            raise protocol.ProtocolError(f"{field}.{key}", f"longer than {max_chars} characters", limit)
    return obj


class AlertLedger:
    """The notifications this replica has handled, the newest ``size`` of them."""

    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self._seen: OrderedDict[AlertKey, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def claim(self, key: AlertKey) -> bool:
        """True the first time ``key`` is claimed (then handle it, or :meth:`release` it on failure)."""
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True

    def release(self, key: AlertKey) -> None:
        """Forget a claim whose handling failed, so that Alertmanager's retry is handled."""
        with self._lock:
            self._seen.pop(key, None)


async def handle(
    engine: Engine, ledger: AlertLedger, alerts: list[Alert], caller: Caller = ANONYMOUS
) -> dict[str, Any]:
    """Halt and record what is new in ``alerts`` as ``caller``; report what happened to each. A run the
    caller may not see is skipped like an unknown one."""
    outcome: dict[str, Any] = {"halted": [], "recorded": [], "duplicates": 0, "skipped": []}
    for alert in alerts:
        run_id = alert.labels.get("run_id")
        if run_id is None or not protocol.RUN_ID_PATTERN.fullmatch(run_id):
            outcome["skipped"].append({"alertname": alert.name, "why": "no valid run_id label"})
        elif not ledger.claim(alert.key):
            outcome["duplicates"] += 1
        else:
            try:
                await _handle_new(engine, alert, run_id, outcome, caller)
            except UnknownRun:
                ledger.release(alert.key)
                outcome["skipped"].append({"run_id": run_id, "alertname": alert.name, "why": "unknown run"})
            except BaseException:
                ledger.release(alert.key)
                raise
    return outcome


async def _handle_new(engine: Engine, alert: Alert, run_id: str, outcome: dict[str, Any], caller: Caller) -> None:
    if not caller.can_see(await engine.team_of(run_id)):
        raise UnknownRun(run_id)
    if alert.status == "firing":
        reason = _reason(alert, engine.settings.max_text_chars)
        command, created = await engine.halt(run_id, reason=reason, source="alertmanager", sent_by=caller.name)
        outcome["halted"].append({"run_id": run_id, "command_id": command["id"], "created": created})
    await run_in_threadpool(record, engine, run_id, alert)
    outcome["recorded"].append({"run_id": run_id, "alertname": alert.name, "status": alert.status})


def record(engine: Engine, run_id: str, alert: Alert) -> None:
    """Store the notification as a closed ``alertmanager`` event of the run, at the run's last step."""
    with engine.store.transaction():
        row = engine.store.get_run(run_id)
        if row is None:
            raise UnknownRun(run_id)
        step = row["last_step"] or 0
        summary = alert.annotations.get("summary", "")
        engine.store.insert_event(
            run_id,
            {
                "detector": "alertmanager",
                "severity": Severity.INFO,
                "layer": None,
                "state": EventState.CLOSED,
                "step": step,
                "first_step": step,
                "last_step": step,
                "end_step": step,
                "value": None,
                "threshold": None,
                "message": f"alert {alert.name} {alert.status} (since {alert.starts_at}): {summary}".strip(),
                "remedy": alert.annotations.get("runbook", ""),
                "steps_to_nonfinite": None,
                "alert": {**_alert_doc(alert), "received_at": engine.clock()},
            },
        )


def _alert_doc(alert: Alert) -> dict[str, Any]:
    return {
        "name": alert.name,
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "starts_at": alert.starts_at,
        "ends_at": alert.ends_at,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
    }


def _reason(alert: Alert, max_chars: int) -> str:
    text = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    return f"alert {alert.name}: {text}".strip().rstrip(":")[:max_chars]
