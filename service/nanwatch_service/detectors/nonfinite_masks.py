"""Which records hold a non-finite value, by kind: the rule the ``nonfinite`` detector reports on and the
pipeline's forecast reads (a record that holds one forecasts 0 steps to a non-finite value).

Non-finite gradients, weights and updates on a step a mixed-precision loss scaler skipped are its normal
operation and do not count; a step skipped without a loss scaler (the job's guard kept a non-finite update
out of the weights) always counts. The masks are computed once per batch and shared through the view.
"""

from __future__ import annotations

import numpy as np

from .batch import BoolArray
from .context import BatchView

Masks = tuple[BoolArray, BoolArray, tuple[BoolArray, BoolArray], BoolArray]
"""Non-finite activations ``(n, n_layers)``, loss ``(n,)``, (layer gradients ``(n, n_layers)``, global gradient
norm ``(n,)``) and weights ``(n, n_layers)``."""


def holds_nonfinite(view: BatchView) -> BoolArray:
    """Per record: whether it holds a non-finite value that counts (what the ``nonfinite`` detector reports)."""
    act, loss, (grads, total), weights = nonfinite_masks(view)
    any_bad: BoolArray = act.any(axis=1) | loss | grads.any(axis=1) | total | weights.any(axis=1)
    return any_bad | guard_skipped(view)


def nonfinite_masks(view: BatchView) -> Masks:
    """Non-finite activations, loss, (layer gradients, global gradient norm) and weights, once per batch."""
    compute = lambda: (_bad_activations(view), _bad_loss(view), _bad_gradients(view), _bad_weights(view))  # noqa: E731
    masks: Masks = view.memo("nonfinite", compute)
    return masks


def _bad_activations(view: BatchView) -> BoolArray:
    """``act_frac_nonfinite`` above 0, or NaN (a client's light step: non-finite entries, share not measured),
    or a non-finite max |x|."""
    frac, present = view.batch.layer("act_frac_nonfinite")
    max_abs, max_present = view.batch.layer("act_max_abs")
    return (present[:, None] & ~(frac <= 0.0)) | (max_present[:, None] & ~np.isfinite(max_abs))


def _bad_loss(view: BatchView) -> BoolArray:
    loss, present = view.batch.scalar("loss")
    return present & ~np.isfinite(loss)


def _scaler_skipped(view: BatchView) -> BoolArray:
    _, has_scale = view.batch.scalar("loss_scale")
    return view.batch.skipped & has_scale


def guard_skipped(view: BatchView) -> BoolArray:
    """Per record: the step was skipped without a loss scaler (the job's guard kept the update out)."""
    _, has_scale = view.batch.scalar("loss_scale")
    guarded: BoolArray = view.batch.skipped & ~has_scale
    return guarded


def _bad_gradients(view: BatchView) -> tuple[BoolArray, BoolArray]:
    total, total_present = view.batch.scalar("grad_norm")
    normal = _scaler_skipped(view)
    bad_total = total_present & ~np.isfinite(total) & ~normal
    weighted = view.run.has_weights
    if (total_present & np.isfinite(total)).all():  # the global norm is finite only if every gradient is
        return np.zeros((view.n, view.run.n_layers), dtype=bool), bad_total
    norm, present = view.batch.layer("grad_norm")
    mean_abs, mean_present = view.batch.layer("grad_mean_abs")
    bad = (present[:, None] & ~np.isfinite(norm)) | (mean_present[:, None] & ~np.isfinite(mean_abs))
    return bad & weighted & ~normal[:, None], bad_total


def _bad_weights(view: BatchView) -> BoolArray:
    norm, present = view.batch.layer("weight_norm")
    update, update_present = view.batch.layer("update_norm")
    bad = (present[:, None] & ~np.isfinite(norm)) | (update_present[:, None] & ~np.isfinite(update))
    bad_weights: BoolArray = bad & view.run.has_weights & ~_scaler_skipped(view)[:, None]
    return bad_weights
