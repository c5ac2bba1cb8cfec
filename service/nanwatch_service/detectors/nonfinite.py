"""nonfinite: a NaN or Inf anywhere (activations, loss, gradients, weights), traced to where it was born.

The origin is looked for in the order the values are computed: activations in forward order (the first
layer whose output is non-finite), then the loss, then gradients (backprop runs backwards, so the *last*
layer in forward order whose gradients are non-finite is where they turned), then weights. A NaN that
never reaches the loss (swallowed later in the network) is still caught at its step.

Under a mixed-precision loss scaler, non-finite gradients on a step the scaler skipped are its normal
operation (it halves the scale and retries), so they are not reported; the loss_scale detector watches
the scale instead. A step skipped without a loss scaler is the job's guard keeping a non-finite update
out of the weights (the Keras callback's, on by default): critical, whatever else the record holds, and
said so, since the weights are still finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import fmt
from .batch import BoolArray
from .context import BatchView
from .finding import Finding, Severity
from .nonfinite_masks import guard_skipped, holds_nonfinite, nonfinite_masks
from .run_info import RunInfo
from .series import max_finite_activation

_CHECK_DATA = "the input data holds NaN/Inf: check the dataset (e.g. `np.isfinite(x).all()`) and its preprocessing"
_EPSILON = (
    "add an epsilon to the denominator (e.g. `x / (var + 1e-7)`) and keep arguments of log/sqrt positive "
    "(`tf.math.log(x + 1e-7)`) in `{name}`"
)
_OVERFLOW = (
    "the output overflowed {dtype}: lower the learning rate, clip gradients with `clipnorm=1.0`, "
    "and add BatchNormalization before `{name}`"
)
_LOSS_LOG = (
    "the loss took the log of a probability that rounded to exactly 0 or 1: use a numerically stable "
    "built-in loss such as `BinaryCrossentropy(from_logits=True)` on logits, or clip the probability "
    "(`tf.clip_by_value(p, 1e-7, 1 - 1e-7)`)"
)
_LOSS = "check the loss for a log or division of 0 and lower the learning rate"
_LOSS_OVERFLOW = (
    "the loss overflowed {dtype} on outputs up to {largest}: lower the learning rate (e.g. ÷10) and clip "
    "gradients with `clipnorm=1.0`"
)
_GRADS = (
    "an op in `{name}` has an infinite derivative at its input (sqrt or pow at 0, log near 0, division by "
    "a tiny value): add an epsilon inside it, and clip gradients with `clipnorm=1.0`"
)
_WEIGHTS = (
    "a non-finite update reached the weights: restore the last checkpoint, lower the learning rate and clip "
    "gradients with `clipnorm=1.0`"
)


@dataclass(frozen=True)
class Nonfinite:
    """Critical on any non-finite value; names the layer where it was born and what likely caused it."""

    name: ClassVar[str] = "nonfinite"

    def detect(self, view: BatchView) -> list[Finding]:
        """One critical finding per record holding a non-finite value."""
        act, loss, (grads, _), weights = nonfinite_masks(view)
        return [self._finding(view, int(i), act, loss, grads, weights) for i in np.flatnonzero(holds_nonfinite(view))]

    def _finding(
        self, view: BatchView, i: int, act: BoolArray, loss: BoolArray, grads: BoolArray, weights: BoolArray
    ) -> Finding:
        run, step = view.run, int(view.batch.steps[i])
        if act[i].any():
            layer = int(np.argmax(act[i]))
            what, detail, remedy = _activation_origin(view, i, layer)
        elif loss[i]:
            layer, what, detail, remedy = -1, "loss", "with every activation finite", _loss_remedy(view, i)
        elif grads[i].any():
            layer = int(np.flatnonzero(grads[i])[-1])
            what, detail, remedy = "gradients", "with finite forward values", _GRADS.format(name=run.names[layer])
        elif weights[i].any():
            layer = int(np.argmax(weights[i]))
            what, detail, remedy = "weights", "after the update", _WEIGHTS
        else:
            layer, what, detail, remedy = -1, "global gradient norm", "", _GRADS.format(name="the model")
        if guard_skipped(view)[i]:
            detail += "; the update was skipped, the weights are unchanged"
        return _make(run, step, layer, what, detail, remedy, _affected(act[i], grads[i], weights[i]))


def _make(run: RunInfo, step: int, layer: int, what: str, detail: str, remedy: str, affected: int) -> Finding:
    where = f" in layer '{run.names[layer]}' ({run.kinds[layer]})" if layer >= 0 else ""
    others = f"; {affected} layer(s) affected in all" if affected > 1 else ""
    message = f"non-finite {what} at step {step}{where} {detail}{others}".replace("  ", " ").strip()
    name = run.names[layer] if layer >= 0 else None
    return Finding("nonfinite", Severity.CRITICAL, step, name, 1.0, 0.0, message, remedy, 0.0)


def _affected(act: BoolArray, grads: BoolArray, weights: BoolArray) -> int:
    return int((act | grads | weights).sum())


def _activation_origin(view: BatchView, i: int, layer: int) -> tuple[str, str, str]:
    run = view.run
    name = run.names[layer]
    inputs, in_present = view.batch.layer("in_max_abs")
    if in_present[i] and not np.isfinite(inputs[i, layer]):
        return "input", "(the layer's input is already non-finite)", _CHECK_DATA
    max_abs, _ = view.batch.layer("act_max_abs")
    mean, _ = view.batch.layer("act_mean")
    # max |x| over the non-NaN entries is +Inf when an entry is; on a client's light step (no max taken,
    # or a NaN max) the mean of all entries is +-Inf when some are Inf and none is NaN
    infinite = bool(np.isinf(max_abs[i, layer]) or np.isinf(mean[i, layer]))
    detail = "(Inf from finite inputs)" if infinite else "(NaN from finite inputs)"
    if run.is_custom(layer):
        return "activations", detail, _EPSILON.format(name=name)
    return "activations", detail, _OVERFLOW.format(dtype=run.act_dtypes[layer], name=name)


def _loss_remedy(view: BatchView, i: int) -> str:
    largest = float(max_finite_activation(view.run, view.batch)[0][i])
    if largest > math.sqrt(view.run.grad_limit):  # its square, as in a squared error, overflows
        return _LOSS_OVERFLOW.format(dtype=view.run.var_dtype, largest=fmt(largest))
    probability = view.run.probability
    if not probability.any():
        return _LOSS
    saturated, _ = view.batch.layer("act_frac_saturated")
    zeros, _ = view.batch.layer("act_frac_zero")
    max_abs, _ = view.batch.layer("act_max_abs")
    at_bound = (saturated[i] > 0) | (zeros[i] > 0) | (max_abs[i] >= 1.0)
    return _LOSS_LOG if bool((at_bound & probability).any()) else _LOSS
