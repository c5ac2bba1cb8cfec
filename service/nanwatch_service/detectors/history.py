"""``steps_to_nonfinite`` at every step of a stored history, for plotting the forecast after the fact.

The service keeps only a run's current forecast. This recomputes the one the pipeline held after each
step, from the columns ``Store.read_series`` returns, with the pipeline's own series, forecast and
non-finite rule: for a run whose records arrived in step order, row ``i`` equals
``Pipeline.steps_to_nonfinite`` right after record ``i`` was processed (the forecast looks back at most
``window`` steps, so a history that starts ``window`` steps before the first row of interest gives the
same values there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from nanwatch.columns import StepColumns

from .batch import Batch, BoolArray, FloatArray
from .context import BatchView, DetectorMemory, DetectorSettings
from .nonfinite_masks import holds_nonfinite
from .pipeline import FORECAST_SERIES
from .run_info import RunInfo

Column = tuple[FloatArray, BoolArray]

FORECAST_FIELDS: Final = (
    "loss",
    "grad_norm",
    "loss_scale",
    "skipped",
    *(f"layers.{f}" for f in ("grad_norm", "grad_mean_abs", "weight_norm", "update_norm")),
    *(f"layers.{f}" for f in ("act_frac_nonfinite", "act_max_abs")),
)
"""The ``Store.read_series`` fields the forecast and the non-finite rule read."""


def _columns(steps: np.ndarray, columns: Mapping[str, Column]) -> StepColumns:
    """The fields of :data:`FORECAST_FIELDS` as one ``StepColumns``, what a :class:`Batch` reads."""
    scalars = [f for f in FORECAST_FIELDS if not f.startswith("layers.")]
    layers = [f for f in FORECAST_FIELDS if f.startswith("layers.")]
    n = len(steps)
    return StepColumns(
        steps=steps,
        scalar_names=tuple(scalars),
        scalars=np.column_stack([columns[f][0] for f in scalars]).reshape(n, len(scalars)),
        layer_names=tuple(f.removeprefix("layers.") for f in layers),
        layers=np.stack([columns[f][0] for f in layers], axis=2),
        present=np.column_stack([columns[f][1] for f in (*scalars, *layers)]).reshape(n, len(FORECAST_FIELDS)),
    )


def steps_to_nonfinite(
    run: Mapping[str, Any], steps: np.ndarray, columns: Mapping[str, Column], window: int = 128
) -> FloatArray:
    """The forecast after each row: 0 at a row holding a non-finite value, +inf where nothing grows
    toward one. ``run`` is the decoded registration, ``columns`` hold :data:`FORECAST_FIELDS`."""
    if not len(steps):
        return np.empty(0)
    info = RunInfo(run)
    view = BatchView(
        info, Batch(_columns(steps, columns)), DetectorMemory(info, window), DetectorSettings(window=window)
    )
    with np.errstate(all="ignore"):
        forecast = np.min([view.forecast(name) for name in FORECAST_SERIES], axis=0, initial=np.inf)
        return np.where(holds_nonfinite(view), 0.0, forecast)
