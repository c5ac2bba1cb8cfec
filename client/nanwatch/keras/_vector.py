"""The one vector a training step leaves behind: its layout, how a chunk of steps folds into it, and its
reading back as ``Monitor.log_step`` keyword arguments.

Layout: ``N_SCALARS`` scalars, then one column per layer slot for each of ``protocol.LAYER_FIELDS``
(field-major). Each position has a fold rule for ``steps_per_execution > 1``: LAST (the last step's
value), MAX (NaN wins) or SUM (divided by its count when read: a mean over the steps that had it).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import tensorflow as tf

from nanwatch.keras import _activations
from nanwatch.protocol import LAYER_FIELDS

LAST, MAX, SUM = 0, 1, 2
# scalar positions: values, then how many steps of the chunk had each group of values
LOSS, LR, GRAD_NORM, LOSS_SCALE, SKIPPED = range(5)
STEPS, LOSS_N, APPLY_N, GRAD_N, ACT_N, GRAD_DETAIL_N, UPDATE_N, ACT_DETAIL_N, ACT_TOPS_N = range(5, 14)
N_SCALARS: Final = 14
_SCALAR_FOLD: Final = (SUM, LAST, MAX, LAST, SUM) + (SUM,) * 9
# per-layer fields: how they fold, and which count says whether (and over how many steps) they were measured
FIELD_FOLD: Final = {
    "grad_norm": MAX,
    "grad_mean_abs": SUM,
    "weight_norm": MAX,  # the largest of the chunk's detail steps (zeros on the others)
    "update_norm": MAX,
    "act_mean": SUM,
    "act_std": SUM,
    "act_max_abs": MAX,
    "act_frac_zero": SUM,
    "act_frac_nonfinite": MAX,
    "act_frac_saturated": SUM,
    "act_frac_zero_var": SUM,
    "in_max_abs": MAX,
}
FIELD_COUNT: Final = {
    "grad_norm": GRAD_N,
    "grad_mean_abs": GRAD_DETAIL_N,
    "weight_norm": UPDATE_N,  # measured on detail steps, as update_norm
    "update_norm": UPDATE_N,
    **{f: ACT_N for f in _activations.EVERY_STEP},
    **{f: ACT_TOPS_N for f in _activations.TOPS},
    **{f: ACT_DETAIL_N for f in _activations.DETAIL},
}
GRAD_FIELDS: Final = ("grad_norm", "grad_mean_abs")


class Layout:
    """Positions in the step vector for ``slots`` layer columns."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.size = N_SCALARS + len(LAYER_FIELDS) * slots
        per_field = [np.full(slots, FIELD_FOLD[f], np.int32) for f in LAYER_FIELDS]
        self.fold = np.concatenate([np.array(_SCALAR_FOLD, np.int32), *per_field])
        self._counts = np.array([FIELD_COUNT[f] for f in LAYER_FIELDS])
        self._means = np.array([FIELD_FOLD[f] == SUM for f in LAYER_FIELDS])

    def pack(self, scalars: dict[int, Any], fields: dict[str, Any]) -> tf.Tensor:
        """The step vector from scalar tensors by position and ``[slots]`` tensors by field name."""
        head = [tf.cast(scalars.get(i, 0.0), tf.float32) for i in range(N_SCALARS)]
        zeros = tf.zeros([self.slots])
        columns = [tf.cast(fields.get(f, zeros), tf.float32) for f in LAYER_FIELDS]
        return tf.concat([tf.stack(head), *columns], axis=0)

    def fold_into(self, previous: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """``previous`` (the chunk so far) with one more step folded in."""
        fold = tf.constant(self.fold)
        nan = tf.logical_or(tf.math.is_nan(previous), tf.math.is_nan(step))
        top = tf.where(nan, float("nan"), tf.maximum(previous, step))
        return tf.where(fold == LAST, step, tf.where(fold == MAX, top, previous + step))

    def unpack(self, vec: np.ndarray, n_layers: int, *, loss_scale: bool, skips: bool) -> dict[str, Any]:
        """``Monitor.log_step`` keyword arguments for the first ``n_layers`` columns of ``vec``.

        Values that were not measured in these steps (no loss seen, a skipped step's gradients, a step
        without activation statistics) are left out rather than sent as zeros.
        """
        kwargs: dict[str, Any] = {}
        if vec[LOSS_N] > 0:
            kwargs["loss"] = float(vec[LOSS] / vec[LOSS_N])
        if vec[APPLY_N] > 0:
            kwargs["lr"] = float(vec[LR])
        if vec[GRAD_N] > 0:
            kwargs["grad_norm"] = float(vec[GRAD_NORM])
        if loss_scale:
            kwargs["loss_scale"] = float(vec[LOSS_SCALE])
        if skips:
            kwargs["skipped"] = bool(vec[SKIPPED] > 0)
        grid = vec[N_SCALARS:].astype(np.float64).reshape(len(LAYER_FIELDS), self.slots)[:, :n_layers]
        counts = vec[self._counts].astype(np.float64)
        divisors = np.where(self._means & (counts > 0), counts, 1.0)
        rows = (grid / divisors[:, None]).tolist()
        kwargs["layers"] = {field: rows[i] for i, field in enumerate(LAYER_FIELDS) if counts[i] > 0}
        return kwargs

    @staticmethod
    def head(vec: np.ndarray) -> list[float]:
        """The scalar positions of ``vec`` as Python floats (cheaper to test than numpy scalars)."""
        return vec[:N_SCALARS].tolist()  # type: ignore[no-any-return]
