"""A batch of decoded step records as columnar numpy arrays, built once and shared by every detector.

Decoded records hold Python floats in lists. Turning them into arrays dominates the cost of detection, so
each field is converted once, only when a detector first asks for it, through ``struct`` (several times
faster than ``np.array`` on a list of floats).
"""

from __future__ import annotations

import array
import operator
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MOSTLY_ZERO: Final = frozenset({"act_frac_nonfinite", "act_frac_saturated", "act_frac_zero_var"})
"""Fields that are 0.0 almost everywhere: rows of zeros are skipped (``any``) instead of converted."""


class Batch:
    """Records ``records`` of one run, in arrival order, over a layer table of ``n_layers`` layers.

    Absent values read as NaN together with a ``present`` mask, so that absence is never confused with
    a non-finite value (which is data).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], n_layers: int) -> None:
        self.records = records
        self.n = len(records)
        self.n_layers = n_layers
        self.steps = np.array([r["step"] for r in records], dtype=np.int64)
        self._scalars: dict[str, tuple[FloatArray, BoolArray]] = {}
        self._layers: dict[tuple[str, bytes | None], tuple[FloatArray, BoolArray]] = {}
        self.derived: dict[str, Any] = {}
        """Values computed from the batch that several readers share (see ``series.act_headroom``)."""

    def scalar(self, name: str) -> tuple[FloatArray, BoolArray]:
        """``(values, present)`` of a scalar field, shape ``(n,)``; absent entries are NaN."""
        if name not in self._scalars:
            raw = [r.get(name) for r in self.records]
            if None not in raw:
                self._scalars[name] = (_convert_flat(raw), np.ones(self.n, dtype=bool))
            else:
                present = np.array([v is not None for v in raw], dtype=bool)
                values = np.array([np.nan if v is None else float(v) for v in raw], dtype=np.float64)
                self._scalars[name] = (values, present)
        return self._scalars[name]

    @property
    def skipped(self) -> BoolArray:
        """Steps the loss scaler skipped because gradients were not finite (False when absent)."""
        values, present = self.scalar("skipped")
        skipped: BoolArray = present & (values != 0.0)
        return skipped

    def layer(self, field: str, columns: BoolArray | None = None) -> tuple[FloatArray, BoolArray]:
        """``(values, present)`` of a per-layer field, shapes ``(n, n_layers)`` and ``(n,)``.

        With ``columns`` only those layers are read (the others are NaN): reading is the expensive part.
        """
        full = (field, None)
        if full in self._layers:
            return self._layers[full]
        # picking more than a quarter of the columns costs more than reading them all
        few = columns is not None and 4 * int(columns.sum()) <= self.n_layers
        key: tuple[str, bytes | None]
        if not few or columns is None:
            columns, key = None, full
        else:
            key = (field, columns.tobytes())
        if key not in self._layers:
            self._layers[key] = _layer_field(self.records, field, self.n_layers, columns)
        return self._layers[key]


def _layer_field(
    records: Sequence[Mapping[str, Any]], field: str, n_layers: int, columns: BoolArray | None
) -> tuple[FloatArray, BoolArray]:
    rows, present = _rows(records, field, n_layers)
    convert = _sparse if field in MOSTLY_ZERO else _convert
    if columns is None:
        return convert(rows, n_layers), present
    values = np.full((len(rows), n_layers), np.nan)
    index = np.flatnonzero(columns).tolist()
    if len(index) == 1:
        values[:, index[0]] = _convert_flat([row[index[0]] for row in rows])
    elif index:
        pick = operator.itemgetter(*index)
        values[:, index] = convert([pick(row) for row in rows], len(index))
    return values, present


def _sparse(rows: list[Any], width: int) -> FloatArray:
    values = np.zeros((len(rows), width))
    if width == 0 or not isinstance(rows[0], list):
        return _convert(rows, width) if width else values
    busy = [i for i, row in enumerate(rows) if any(row)]
    if len(busy) == len(rows):
        return _convert(rows, width)
    if busy:
        values[busy] = _convert([rows[i] for i in busy], width)
    return values


def _convert(rows: list[Any], width: int) -> FloatArray:
    if width == 0:
        return np.zeros((len(rows), 0))
    if isinstance(rows[0], array.array) and rows[0].typecode == "d":  # copied as memory, not as floats
        return np.frombuffer(b"".join(rows), dtype=np.float64).reshape(len(rows), width)
    if not isinstance(rows[0], (list, tuple)):
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    flat: list[float] = []
    for row in rows:
        flat += row
    return _convert_flat(flat).reshape(len(rows), width)


def _convert_flat(flat: list[Any]) -> FloatArray:
    try:
        return np.frombuffer(struct.pack(f"{len(flat)}d", *flat), dtype=np.float64)
    except struct.error:  # an int or a JSON-style string slipped through: take the slow path
        return np.array(flat, dtype=np.float64)


def _rows(records: Sequence[Mapping[str, Any]], field: str, n_layers: int) -> tuple[list[Any], BoolArray]:
    """Each record's array for ``field``; absent or mis-sized arrays become NaN rows."""
    try:
        rows = [record["layers"][field] for record in records]
        if set(map(len, rows)) == {n_layers}:
            return rows, np.ones(len(records), dtype=bool)
    except (KeyError, TypeError):
        pass
    missing = [np.nan] * n_layers
    rows = [(record.get("layers") or {}).get(field) for record in records]
    present = np.array([row is not None and len(row) == n_layers for row in rows], dtype=bool)
    return [row if ok else missing for row, ok in zip(rows, present, strict=True)], present
