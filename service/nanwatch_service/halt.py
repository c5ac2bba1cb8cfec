"""Halt semantics: when a run's policy asks for a halt, and what a halt command holds.

A command carries ``at_step``: the job stops at the first batch end whose step is at least ``at_step``,
so every worker of a synchronous multi-worker run stops at the same step. It is set to the last step the
service has seen: a job in lockstep (``Monitor.sync``) stops at the very batch end that sent the offending
record, and a job that is already further along stops at its next batch end.

A run has at most one halt in flight: asking again while one is pending or after the job acknowledged it
returns the same command. A job that re-registers after a halt (resumed from a checkpoint) can be halted
again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

from nanwatch.vocabulary import HaltPolicy, RunStatus
from nanwatch_service.detectors import SEVERITY_RANK, Finding, Severity
from nanwatch_service.store.rows import CommandRow

LEAST_SEVERITY_TO_HALT: Final[dict[str, Severity | None]] = {
    HaltPolicy.CRITICAL: Severity.CRITICAL,
    HaltPolicy.WARNING: Severity.WARNING,
    HaltPolicy.NEVER: None,
}
"""Under each halt policy, the least severe finding that halts the run (None: none does)."""


def finding_to_halt(policy: str, findings: Sequence[Finding]) -> Finding | None:
    """The finding that makes ``policy`` halt the run (the most severe, then the earliest), or None."""
    minimum = LEAST_SEVERITY_TO_HALT[policy]
    if minimum is None:
        return None
    eligible = [f for f in findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[minimum]]
    if not eligible:
        return None
    return min(eligible, key=lambda f: (-SEVERITY_RANK[f.severity], f.step))


def new_command(
    *, reason: str, source: str, step: int | None, at_step: int, now: float, sent_by: str | None = None
) -> CommandRow:
    """A halt command ready for the store; ``sent_by`` names the token that asked (None for a detector)."""
    return {
        "id": uuid.uuid4().hex,
        "action": "halt",
        "reason": reason,
        "source": source,
        "step": step,
        "at_step": at_step,
        "created_at": now,
        "delivered_at": None,
        "acked_at": None,
        "acked_step": None,
        "sent_by": sent_by,
    }


def wire_command(command: CommandRow) -> dict[str, Any]:
    """The part of a stored command the job receives."""
    return {
        "id": command["id"],
        "action": command["action"],
        "reason": command["reason"],
        "source": command["source"],
        "step": command["step"],
        "at_step": command["at_step"],
    }


def halt_reason(finding: Finding) -> str:
    """One line a person reads in the job's log: what, where, and the fix."""
    where = f" in layer {finding.layer}" if finding.layer else ""
    return f"{finding.detector}{where} at step {finding.step}: {finding.message} Fix: {finding.remedy}"


def is_in_force(command: CommandRow | None, run_status: str) -> bool:
    """A halt counts as in force while pending, or once acknowledged while the run stays halted."""
    if command is None:
        return False
    return command["acked_at"] is None or run_status == RunStatus.HALTED
