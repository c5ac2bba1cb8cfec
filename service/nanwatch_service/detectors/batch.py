"""A batch of one run's step records as the detectors read it: columns, built once and shared by every detector.

The columns are :class:`nanwatch.columns.StepColumns`: a protocol-2 batch's arrays are views of the request
body itself, and a protocol-1 batch is converted once when it is decoded. Reading a field costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from nanwatch.columns import StepColumns

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Batch:
    """Records of one run, in arrival order, over a layer table of ``n_layers`` layers.

    Absent values read as NaN together with a ``present`` mask, so that absence is never confused with
    a non-finite value (which is data).
    """

    def __init__(self, columns: StepColumns) -> None:
        self.columns = columns
        self.n = columns.n
        self.n_layers = columns.n_layers
        self.steps = columns.steps
        self.derived: dict[str, Any] = {}
        """Values computed from the batch that several readers share (see ``series.act_headroom``)."""

    @classmethod
    def of(cls, records: Sequence[Mapping[str, Any]] | StepColumns, n_layers: int) -> Batch:
        """A batch of columns, or of protocol-1 records (converted here)."""
        if isinstance(records, StepColumns):
            return cls(records)
        return cls(StepColumns.from_records(records, n_layers))

    def scalar(self, name: str) -> tuple[FloatArray, BoolArray]:
        """``(values, present)`` of a scalar field, shape ``(n,)``; absent entries are NaN."""
        return self.columns.scalar(name)

    @property
    def skipped(self) -> BoolArray:
        """Steps the loss scaler skipped because gradients were not finite (False when absent)."""
        values, present = self.scalar("skipped")
        skipped: BoolArray = present & (values != 0.0)
        return skipped

    def layer(self, field: str) -> tuple[FloatArray, BoolArray]:
        """``(values, present)`` of a per-layer field, shapes ``(n, n_layers)`` and ``(n,)``."""
        return self.columns.layer(field)
