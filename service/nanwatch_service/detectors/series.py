"""Scalar series derived from each record, kept over a run's trailing window.

Each series is NaN where its value is absent or unusable (non-finite, or a log of zero): non-finite values
are the nonfinite detector's business and must not poison the baselines of the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import numpy as np

from .batch import Batch, FloatArray
from .run_info import RunInfo


def _log_positive(values: FloatArray) -> FloatArray:
    usable = np.isfinite(values) & (values > 0)
    return np.where(usable, np.log(np.where(usable, values, 1.0)), np.nan)


def global_grad_norm(run: RunInfo, batch: Batch) -> FloatArray:
    """The record's ``grad_norm``, or the norm of the per-layer norms of layers with weights."""
    values, present = batch.scalar("grad_norm")
    if present.all():
        return values
    layer_norms, layer_present = batch.layer("grad_norm")
    combined = np.sqrt(np.sum(np.square(layer_norms[:, run.has_weights]), axis=1))
    return np.where(present, values, np.where(layer_present & run.has_weights.any(), combined, np.nan))


def log_grad_norm(run: RunInfo, batch: Batch) -> FloatArray:
    """log of the global gradient norm."""
    return _log_positive(global_grad_norm(run, batch))


def loss(run: RunInfo, batch: Batch) -> FloatArray:
    """The per-batch loss where finite."""
    values, _ = batch.scalar("loss")
    return np.where(np.isfinite(values), values, np.nan)


def log_abs_loss(run: RunInfo, batch: Batch) -> FloatArray:
    """log |loss|."""
    values, _ = batch.scalar("loss")
    return _log_positive(np.abs(values))


def max_finite_activation(run: RunInfo, batch: Batch) -> tuple[FloatArray, np.ndarray]:
    """Largest finite ``act_max_abs`` over layers per record, and the index of that layer."""
    values, _ = batch.layer("act_max_abs")
    if run.n_layers == 0:
        return np.full(batch.n, np.nan), np.zeros(batch.n, dtype=np.intp)
    finite = np.where(np.isfinite(values), values, -np.inf)
    where = np.argmax(finite, axis=1)
    return finite[np.arange(batch.n), where], where


def act_headroom(run: RunInfo, batch: Batch) -> tuple[FloatArray, np.ndarray]:
    """Per record, the largest ``log(act_max_abs / dtype max)`` over layers (≤ 0 while finite; NaN when
    no layer has a finite non-zero output), and the index of that layer."""
    if "act_headroom" not in batch.derived:
        batch.derived["act_headroom"] = _act_headroom(run, batch)
    headroom: tuple[FloatArray, np.ndarray] = batch.derived["act_headroom"]
    return headroom


def _act_headroom(run: RunInfo, batch: Batch) -> tuple[FloatArray, np.ndarray]:
    values, _ = batch.layer("act_max_abs")
    if run.n_layers == 0:
        return np.full(batch.n, np.nan), np.zeros(batch.n, dtype=np.intp)
    ratio = np.where(np.isfinite(values) & (values > 0), values / run.act_limits, -1.0)
    where = np.argmax(ratio, axis=1)
    best = ratio[np.arange(batch.n), where]
    return np.where(best > 0, np.log(np.where(best > 0, best, 1.0)), np.nan), where


def log_act_fraction(run: RunInfo, batch: Batch) -> FloatArray:
    """log of the largest activation as a fraction of its dtype's largest value (reaches 0 at overflow)."""
    return act_headroom(run, batch)[0]


def loss_scale(run: RunInfo, batch: Batch) -> FloatArray:
    """The loss scaler's scale (NaN when absent)."""
    return batch.scalar("loss_scale")[0]


def skipped(run: RunInfo, batch: Batch) -> FloatArray:
    """1.0 for a step the loss scaler skipped, 0.0 otherwise."""
    return batch.skipped.astype(np.float64)


SERIES: Final[dict[str, Callable[[RunInfo, Batch], FloatArray]]] = {
    "log_grad_norm": log_grad_norm,
    "loss": loss,
    "log_abs_loss": log_abs_loss,
    "log_act_fraction": log_act_fraction,
    "loss_scale": loss_scale,
    "skipped": skipped,
}
"""Every series a run keeps, by name."""


def forecast_limits(run: RunInfo) -> dict[str, float]:
    """The log-limit each forecast series runs into: its dtype's largest finite value."""
    return {
        "log_grad_norm": math.log(run.grad_limit),
        "log_abs_loss": math.log(run.grad_limit),
        "log_act_fraction": 0.0,
    }
