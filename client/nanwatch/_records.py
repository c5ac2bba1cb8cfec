"""What the Monitor makes of its caller's values: step records, the run registration, the local check."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nanwatch import protocol


def make_record(
    step: int,
    wall_time: float | None,
    *,
    loss: float | None = None,
    lr: float | None = None,
    grad_norm: float | None = None,
    loss_scale: float | None = None,
    skipped: bool | None = None,
    layers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of ``log_step``'s arguments (ProtocolError for a bad value, TypeError for an unknown one)."""
    step, wall_time = step_and_time(step, wall_time)
    record: dict[str, Any] = {"step": step, "wall_time": wall_time}
    scalars = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_scale": loss_scale}
    record.update({k: float(v) for k, v in scalars.items() if v is not None})
    if skipped is not None:
        record["skipped"] = bool(skipped)
    if layers:
        record["layers"] = {_layer_field(k): np.array(v, dtype=np.float64).ravel() for k, v in layers.items()}
    return record


def step_and_time(step: int, wall_time: float | None) -> tuple[int, float]:
    """A record's step (ProtocolError when negative) and wall time (now, when not given)."""
    if int(step) < 0:
        raise protocol.ProtocolError("step", f"must be >= 0, got {step}")
    return int(step), time.time() if wall_time is None else float(wall_time)


def _layer_field(name: str) -> str:
    if name not in protocol.LAYER_FIELDS:
        raise protocol.ProtocolError(
            f"layers.{name}",
            f"unknown per-layer statistic; expected one of {', '.join(protocol.LAYER_FIELDS)}",
        )
    return name


def registration(
    current: Mapping[str, Any],
    layers: Sequence[Mapping[str, Any]] | None,
    dtype_policy: str | None,
    **fields: Any,
) -> dict[str, Any]:
    """``current`` updated with the given values, validated by the protocol (raises ProtocolError)."""
    updated = {**current, **fields}
    if layers is not None:
        updated["layers"] = [{k: int(v) if k == "params" else v for k, v in layer.items()} for layer in layers]
    if dtype_policy is not None:
        updated["dtype_policy"] = dtype_policy
    return protocol.decode_run(updated)


def nonfinite_reason(record: Mapping[str, Any], layer_names: Sequence[str]) -> str | None:
    """Name the first non-finite loss or gradient norm in ``record``, or None when all are finite."""
    for key, what in (("loss", "loss"), ("grad_norm", "global grad_norm")):
        if key in record and not math.isfinite(record[key]):
            return f"non-finite {what} ({record[key]})"
    norms = record.get("layers", {}).get("grad_norm", [])
    bad = next((i for i, value in enumerate(norms) if not math.isfinite(value)), None)
    if bad is None:
        return None
    layer = repr(layer_names[bad]) if bad < len(layer_names) else f"#{bad}"
    return f"non-finite grad_norm ({norms[bad]}) in layer {layer}"
