"""Runs for the page tests, streamed to the real service as a job would: a steady one and a diverging one."""

from __future__ import annotations

import math
import random
from typing import Any

import httpx

from tests.service.helpers import post_steps, record, register, reply

DIVERGES_AT = 300
NAN_AT = 316


def steady_record(step: int, rng: random.Random) -> dict[str, Any]:
    """A healthy step: noisy, slowly falling loss; gradient norms around 0.2."""
    noise = [math.exp(rng.gauss(0.0, 0.15)) for _ in range(3)]
    loss = 0.5 * math.exp(-step / 400) * noise[0]
    rec = record(step, loss=loss, grad_norm=[0.1 * noise[1], 0.0, 0.05 * noise[2]])
    rec["grad_norm"] = 0.2 * noise[1]
    return rec


def diverging_record(step: int, rng: random.Random) -> dict[str, Any]:
    """Steady until DIVERGES_AT, then gradients ×4, activations ×3 and the loss ×2 a step; NaN at NAN_AT."""
    rec = steady_record(step, rng)
    if step < DIVERGES_AT:
        return rec
    k = step - DIVERGES_AT + 1
    if step >= NAN_AT:
        rec.update(loss=math.nan, grad_norm=math.nan)
        rec["layers"].update(grad_norm=[math.nan, 0.0, math.inf], act_max_abs=[math.inf, 2.0, math.nan])
        rec["layers"]["act_frac_nonfinite"] = [0.5, 0.0, 1.0]
        return rec
    rec.update(loss=rec["loss"] * 2.0**k, grad_norm=0.2 * 4.0**k)
    rec["layers"].update(grad_norm=[0.1 * 4.0**k, 0.0, 0.05 * 4.0**k], act_max_abs=[2.0 * 3.0**k, 2.0, 2.0])
    return rec


def stream(client: httpx.Client, run_id: str, steps: int, diverging: bool, batch: int = 20, **spec: Any) -> Any:
    """Register and stream a run; a halt in a reply is applied and acknowledged at the next batch, as the
    client does. Returns the last reply."""
    register(client, run_id, **spec)
    rng = random.Random(run_id)
    make = diverging_record if diverging else steady_record
    last: Any = None
    for first in range(0, steps, batch):
        records = [make(s, rng) for s in range(first, min(steps, first + batch))]
        last = reply(post_steps(client, run_id, records))
        halts = [c for c in last["commands"] if c["action"] == "halt"]
        if halts:
            stop = records[-1]["step"]
            return reply(post_steps(client, run_id, [], acks=[{"id": halts[0]["id"], "step": stop}], final=True))
    return last
