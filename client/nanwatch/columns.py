"""Step records as columns: what protocol 2 carries, what the detectors read and what the store keeps.

A batch of ``n`` step records over a layer table of ``L`` layers is held as

- ``steps``: int64, shape ``(n,)``;
- ``scalars``: float64, shape ``(n, k)``, one column per name of ``scalar_names`` (``skipped`` reads 1.0 or 0.0);
- ``layers``: float64, shape ``(n, L, s)``, steps × layers × statistics, one statistic per name of ``layer_names``;
- ``present``: bool, shape ``(n, k + s)``, whether each record carried each scalar and each statistic, or
  None when every record carried every one.

A value a record did not carry holds NaN in the arrays and False in ``present``. NaN is data here, so only
``present`` says what is absent; readers (``scalar``, ``layer``) hand both out together.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from nanwatch.fields import LAYER_FIELDS, SCALAR_FIELDS

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

SCALAR_COLUMNS: Final = (*SCALAR_FIELDS, "skipped")
"""Every scalar column, in the order a batch lists them (``skipped`` is a bool carried as 1.0/0.0)."""


@dataclass(frozen=True, eq=False)
class StepColumns:
    """A run's step records in arrival order, as columns (see the module docstring for the shapes)."""

    steps: IntArray
    scalar_names: tuple[str, ...]
    scalars: FloatArray
    layer_names: tuple[str, ...]
    layers: FloatArray
    present: BoolArray | None = None

    @cached_property
    def n(self) -> int:
        """Records in the batch."""
        return len(self.steps)

    @cached_property
    def n_layers(self) -> int:
        """Layers each per-layer statistic covers."""
        return int(self.layers.shape[1])

    def scalar(self, name: str) -> tuple[FloatArray, BoolArray]:
        """``(values, present)`` of a scalar, shape ``(n,)``; NaN and False where a record lacks it."""
        if name not in self.scalar_names:
            return np.full(self.n, np.nan), np.zeros(self.n, dtype=bool)
        j = self.scalar_names.index(name)
        return self.scalars[:, j], self._present(j)

    def layer(self, name: str) -> tuple[FloatArray, BoolArray]:
        """``(values, present)`` of a per-layer statistic, shapes ``(n, L)`` and ``(n,)``."""
        if name not in self.layer_names:
            return np.full((self.n, self.n_layers), np.nan), np.zeros(self.n, dtype=bool)
        j = self.layer_names.index(name)
        return self.layers[:, :, j], self._present(len(self.scalar_names) + j)

    def _present(self, column: int) -> BoolArray:
        return self._all_present if self.present is None else self.present[:, column]

    @cached_property
    def _all_present(self) -> BoolArray:
        everywhere = np.ones(self.n, dtype=bool)
        everywhere.flags.writeable = False  # shared by every reader
        return everywhere

    def take(self, rows: npt.NDArray[np.intp] | BoolArray | slice) -> StepColumns:
        """The records ``rows`` (an index, a mask or a slice), in their order; these very columns when a
        mask keeps every record (no copy)."""
        if isinstance(rows, np.ndarray) and rows.dtype == np.bool_ and rows.all() and len(rows) == self.n:
            return self
        present = None if self.present is None else self.present[rows]
        return StepColumns(
            self.steps[rows], self.scalar_names, self.scalars[rows], self.layer_names, self.layers[rows], present
        )

    def records(self, fields: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The records as protocol-1 maps (``step``, scalars, ``skipped``, ``layers``), each holding only
        what it carried; ``fields`` keeps only those (``step`` is always there)."""
        chosen = None if fields is None else frozenset(fields)
        scalars = [(j, name) for j, name in enumerate(self.scalar_names) if chosen is None or name in chosen]
        with_layers = chosen is None or "layers" in chosen
        records: list[dict[str, Any]] = [{"step": step} for step in self.steps.tolist()]
        present = self.present.tolist() if self.present is not None else None
        for j, name in scalars:
            values = self.scalars[:, j].tolist()
            if name == "skipped":
                values = [value != 0.0 for value in values]
            for i, record in enumerate(records):
                if present is None or present[i][j]:
                    record[name] = values[i]
        if with_layers and self.layer_names:
            self._add_layers(records, present)
        return records

    def _add_layers(self, records: list[dict[str, Any]], present: list[list[bool]] | None) -> None:
        k = len(self.scalar_names)
        per_field = [self.layers[:, :, j].tolist() for j in range(len(self.layer_names))]
        for i, record in enumerate(records):
            layers = {
                name: per_field[j][i] for j, name in enumerate(self.layer_names) if present is None or present[i][k + j]
            }
            if layers:
                record["layers"] = layers

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], n_layers: int | None = None) -> StepColumns:
        """Columns of protocol-1 records (``step``, optional scalars, ``skipped``, ``layers``); per-layer
        values may be lists, tuples or numpy arrays. ``n_layers`` defaults to the first layer array's length.

        Raises ValueError when a per-layer array has another length.
        """
        steps = np.array([record["step"] for record in records], dtype=np.int64)
        scalar_names = tuple(name for name in SCALAR_COLUMNS if any(r.get(name) is not None for r in records))
        scalar_cols = [_scalar_column(records, name) for name in scalar_names]
        layer_rows = {name: [(r.get("layers") or {}).get(name) for r in records] for name in LAYER_FIELDS}
        layer_names = tuple(name for name, rows in layer_rows.items() if any(row is not None for row in rows))
        if n_layers is None:
            n_layers = next((len(row) for name in layer_names for row in layer_rows[name] if row is not None), 0)
        layer_cols = [_layer_column(layer_rows[name], name, n_layers, steps) for name in layer_names]
        n = len(records)
        scalars = np.stack([values for values, _ in scalar_cols], axis=1) if scalar_cols else np.empty((n, 0))
        layers = np.stack([values for values, _ in layer_cols], axis=2) if layer_cols else np.empty((n, n_layers, 0))
        masks = [present for _, present in (*scalar_cols, *layer_cols)]
        present = np.stack(masks, axis=1) if masks else np.ones((n, 0), dtype=bool)
        return cls(steps, scalar_names, scalars, layer_names, layers, None if present.all() else present)

    @classmethod
    def concat(cls, parts: Sequence[StepColumns], n_layers: int) -> StepColumns:
        """The parts one after the other, over the union of their names. A part over another number of
        layers (a run registered again with a new layer table) keeps its scalars; its statistics read absent."""
        scalar_names = tuple(name for name in SCALAR_COLUMNS if any(name in p.scalar_names for p in parts))
        layer_names = tuple(name for name in LAYER_FIELDS if any(name in p.layer_names for p in parts))
        aligned = [part._aligned(scalar_names, layer_names, n_layers) for part in parts]
        if not aligned:
            return cls.empty(n_layers)
        present = np.concatenate([p._presence() for p in aligned])
        return cls(
            np.concatenate([p.steps for p in aligned]),
            scalar_names,
            np.concatenate([p.scalars for p in aligned]),
            layer_names,
            np.concatenate([p.layers for p in aligned]),
            None if present.all() else present,
        )

    @classmethod
    def empty(cls, n_layers: int) -> StepColumns:
        """No records."""
        return cls(np.empty(0, dtype=np.int64), (), np.empty((0, 0)), (), np.empty((0, n_layers, 0)))

    def _presence(self) -> BoolArray:
        if self.present is None:
            return np.ones((self.n, len(self.scalar_names) + len(self.layer_names)), dtype=bool)
        return self.present

    def _aligned(self, scalar_names: tuple[str, ...], layer_names: tuple[str, ...], n_layers: int) -> StepColumns:
        if (scalar_names, layer_names, n_layers) == (self.scalar_names, self.layer_names, self.n_layers):
            return self
        same_width = n_layers == self.n_layers
        scalars = [self.scalar(name) for name in scalar_names]
        layers = [self.layer(name) if same_width else _absent_layer(self.n, n_layers) for name in layer_names]
        present = [mask for _, mask in (*scalars, *layers)]
        return StepColumns(
            self.steps,
            scalar_names,
            np.stack([v for v, _ in scalars], axis=1) if scalars else np.empty((self.n, 0)),
            layer_names,
            np.stack([v for v, _ in layers], axis=2) if layers else np.empty((self.n, n_layers, 0)),
            np.stack(present, axis=1) if present else None,
        )


def _absent_layer(n: int, n_layers: int) -> tuple[FloatArray, BoolArray]:
    return np.full((n, n_layers), np.nan), np.zeros(n, dtype=bool)


def _scalar_column(records: Sequence[Mapping[str, Any]], name: str) -> tuple[FloatArray, BoolArray]:
    raw = [record.get(name) for record in records]
    present = np.array([value is not None for value in raw], dtype=bool)
    values = np.array([np.nan if value is None else float(value) for value in raw], dtype=np.float64)
    return values, present


def _layer_column(rows: list[Any], name: str, n_layers: int, steps: IntArray) -> tuple[FloatArray, BoolArray]:
    present = np.array([row is not None for row in rows], dtype=bool)
    for i, row in enumerate(rows):
        if row is not None and len(row) != n_layers:
            raise ValueError(
                f"layers.{name} of step {int(steps[i])} has {len(row)} entries; the layer table has {n_layers}"
            )
    absent = [np.nan] * n_layers
    return _matrix([absent if row is None else row for row in rows], n_layers), present


def _matrix(rows: list[Any], width: int) -> FloatArray:
    """Rows of ``width`` floats as an ``(n, width)`` array: lists of Python floats go through ``struct``
    (several times faster than ``np.array`` on them), arrays are stacked."""
    if width == 0:
        return np.empty((len(rows), 0))
    if all(type(row) is list for row in rows):
        flat = list(itertools.chain.from_iterable(rows))
        try:
            return np.frombuffer(struct.pack(f"{len(flat)}d", *flat), dtype=np.float64).reshape(len(rows), width)
        except struct.error:  # an int or a numpy scalar among the floats: take the general path
            pass
    return np.array([np.asarray(row, dtype=np.float64) for row in rows], dtype=np.float64).reshape(len(rows), width)
