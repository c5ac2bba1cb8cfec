"""The numbers a step record carries: its scalars and its per-layer statistics, by name and in wire order."""

from __future__ import annotations

from typing import Final

SCALAR_FIELDS: Final = ("wall_time", "loss", "lr", "grad_norm", "loss_scale")
"""Optional float scalars of a step record (``step`` is a required int, ``skipped`` an optional bool)."""

LAYER_FIELDS: Final = (
    "grad_norm",  # L2 norm of the layer's gradients (scale-safe: non-finite only if a gradient is)
    "grad_mean_abs",  # mean |g| over the layer's gradients
    "weight_norm",  # L2 norm of the layer's weights after the update (scale-safe)
    "update_norm",  # ‖Δw‖ of this step's update
    "act_mean",  # mean of the layer's output
    "act_std",  # standard deviation of the layer's output
    "act_max_abs",  # max |output| over finite entries; +Inf if any output is ±Inf
    "act_frac_zero",  # fraction of outputs exactly 0
    "act_frac_nonfinite",  # fraction of outputs NaN or ±Inf; NaN: some are, the share was not measured
    "act_frac_saturated",  # fraction within 1e-7 of a bounded activation's bounds (sigmoid/tanh/softmax)
    "act_frac_zero_var",  # fraction of rows (samples) whose output has zero variance
    "in_max_abs",  # max |input| of the layer, for its gain (output vs input magnitude)
)
"""Per-layer statistics of a step record, each an array as long as the layer table."""
