"""Step history in SQL: chunk rows (see ``store.chunks``) written a group at a time, read back as records,
as the chunks of a run's last steps, or as a run's series of chosen fields; old chunks compacted by the
retention rules (see ``store.retention``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

import numpy as np

from nanwatch.columns import StepColumns
from nanwatch_service.store import chunks, retention
from nanwatch_service.store.base import BIGGEST, Column, Steps, clamp
from nanwatch_service.store.chunks import SEQ_STRIDE, StoredChunk
from nanwatch_service.store.retention import ChunkInfo, Retention
from nanwatch_service.store.rows import StepRow

_PAGE: Final = 32
"""Chunk rows fetched at a time while reading history: reads stop as soon as they have what they need."""


class StepHistory:
    """The step-history half of :class:`~nanwatch_service.store.sql.SqlStore`."""

    _query: Callable[[str, Sequence[Any], Sequence[str]], list[dict[str, Any]]]
    _execute_many: Callable[[str, Sequence[Sequence[Any]]], None]
    _execute: Callable[[str, Sequence[Any]], Any]
    transaction: Callable[[], AbstractContextManager[None]]

    def _insert_chunks(self, writes: Sequence[Any]) -> None:
        rows = []
        for write in writes:
            columns: StepColumns = write.columns
            if columns.n:
                head, layers = chunks.pack(columns)
                low, high = int(columns.steps.min()), int(columns.steps.max())
                rows.append((write.run_id, write.attempt, low, high, columns.n, write.received_at, head, layers))
        self._execute_many(
            "INSERT INTO step_chunks (run_id, attempt, min_step, max_step, n, received_at, head, layers)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def read_steps(
        self,
        run_id: str,
        *,
        start: int | None,
        end: int | None,
        attempt: str | None,
        after_seq: int,
        limit: int,
        fields: Sequence[str] | None = None,
    ) -> list[StepRow]:
        """Rows ``{seq, attempt, received_at, record}`` ordered by seq (see the Store protocol)."""
        with_layers = fields is None or "layers" in fields
        rows: list[StepRow] = []
        for chunk in self._chunks(run_id, with_layers, start, end, attempt, first=clamp(after_seq) // SEQ_STRIDE):
            keep = _in_range(chunk.columns.steps, start, end) & (chunk.seqs > after_seq)
            picked = chunk.columns.take(keep)
            for seq, record in zip(chunk.seqs[keep].tolist(), picked.records(fields), strict=True):
                rows.append({"seq": seq, "attempt": chunk.attempt, "received_at": chunk.received_at, "record": record})
            if len(rows) >= limit:
                return rows[:limit]
        return rows

    def recent_chunks(self, run_id: str, n: int) -> list[StoredChunk]:
        """The chunks holding the run's last ``n`` records, oldest first."""
        found: list[StoredChunk] = []
        held = 0
        for chunk in self._chunks(run_id, True, None, None, None, newest_first=True):
            if held >= n:
                break
            found.append(chunk)
            held += chunk.columns.n
        return found[::-1]

    def read_series(
        self,
        run_id: str,
        fields: Sequence[str],
        *,
        start: int | None,
        end: int | None,
        attempt: str | None = None,
        n_layers: int | None = None,
    ) -> tuple[Steps, dict[str, Column]]:
        """Steps and each field's ``(values, present)`` over the run (see the Store protocol)."""
        with_layers = any(f.startswith("layers.") for f in fields)
        parts = [
            chunk.columns.take(_in_range(chunk.columns.steps, start, end))
            for chunk in self._chunks(run_id, with_layers, start, end, attempt)
        ]
        width = 0 if not parts else parts[-1].n_layers if n_layers is None else n_layers
        columns = StepColumns.concat(parts, n_layers=width)
        series = {}
        for name in fields:
            if name.startswith("layers."):
                values, present = columns.layer(name.removeprefix("layers."))
                series[name] = (np.where(present[:, None], values, np.nan), present)
            else:
                values, present = columns.scalar(name)
                series[name] = (np.where(present, values, np.nan), present)
        return columns.steps, series

    def runs_to_compact(self, threshold: int) -> list[str]:
        """The runs holding more than ``threshold`` records in chunks not compacted yet."""
        sql = "SELECT run_id FROM step_chunks WHERE compacted = 0 GROUP BY run_id HAVING SUM(n) > ?"
        return [row["run_id"] for row in self._query(sql, (threshold,), ("run_id",))]

    def compact_history(self, run_id: str, rules: Retention) -> int:
        """Apply the retention rules to the run's old chunks; return how many chunk rows it holds fewer.
        Each group is rewritten in a transaction of its own; a group another replica rewrote meanwhile is
        left to it."""
        removed = 0
        for group in retention.groups(self._chunk_infos(run_id), rules.keep_steps):
            removed += self._compact_group(run_id, group, rules)
        return removed

    def _chunk_infos(self, run_id: str) -> list[ChunkInfo]:
        """The run's chunks not compacted yet and its newest compacted one, in id order, without blobs."""
        columns = ("id", "attempt", "n", "bytes", "compacted")
        select = "SELECT id, attempt, n, LENGTH(head) + LENGTH(layers), compacted FROM step_chunks WHERE run_id = ?"
        fresh = self._query(f"{select} AND compacted = 0", (run_id,), columns)
        tail = self._query(f"{select} AND compacted = 1 ORDER BY id DESC LIMIT 1", (run_id,), columns)
        rows = sorted(tail + fresh, key=lambda row: int(row["id"]))
        return [ChunkInfo(int(r["id"]), r["attempt"], int(r["n"]), int(r["bytes"]), bool(r["compacted"])) for r in rows]

    def _compact_group(self, run_id: str, group: list[ChunkInfo], rules: Retention) -> int:
        first, last = group[0].id, group[-1].id
        stored = list(self._chunks(run_id, True, None, None, None, first=first, last=last))
        if [chunk.id for chunk in stored] != [chunk.id for chunk in group]:
            return 0  # rewritten meanwhile
        pieces = retention.compact(stored, rules)
        reused = [piece_id for piece_id, _ in pieces]
        keep = f" AND id NOT IN ({', '.join('?' * len(reused))})" if reused else ""
        try:
            with self.transaction():
                sql = f"DELETE FROM step_chunks WHERE run_id = ? AND id >= ? AND id <= ?{keep}"
                deleted = int(self._execute(sql, (run_id, first, last, *reused)).rowcount)
                rewritten = sum(self._rewrite_chunk(run_id, piece_id, columns) for piece_id, columns in pieces)
                if deleted != len(group) - len(reused) or rewritten != len(reused):
                    raise _Raced()
        except _Raced:
            return 0
        return deleted

    def _rewrite_chunk(self, run_id: str, chunk_id: int, columns: StepColumns) -> int:
        head, layers = chunks.pack(columns)
        low, high = int(columns.steps.min()), int(columns.steps.max())
        sql = (
            "UPDATE step_chunks SET min_step = ?, max_step = ?, n = ?, head = ?, layers = ?, compacted = 1"
            " WHERE run_id = ? AND id = ?"
        )
        return int(self._execute(sql, (low, high, columns.n, head, layers, run_id, chunk_id)).rowcount)

    def _chunks(
        self,
        run_id: str,
        with_layers: bool,
        start: int | None,
        end: int | None,
        attempt: str | None,
        *,
        first: int = 0,
        last: int | None = None,
        newest_first: bool = False,
    ) -> Iterator[StoredChunk]:
        """The run's chunks that may hold steps in ``[start, end]`` (ids from ``first`` to ``last``), read a
        page of rows at a time (no lock is held between pages, so a reader that stops early costs nothing
        more)."""
        columns = ("id", "attempt", "received_at", "head", *(("layers",) if with_layers else ()))
        sql = f"SELECT {', '.join(columns)} FROM step_chunks WHERE run_id = ?"
        params: list[Any] = [run_id]
        clauses = (("max_step >= ?", start), ("min_step <= ?", end), ("attempt = ?", attempt), ("id <= ?", last))
        for clause, value in clauses:
            if value is not None:
                sql += f" AND {clause}"
                params.append(clamp(value) if isinstance(value, int) else value)
        sql += " AND id < ? ORDER BY id DESC LIMIT ?" if newest_first else " AND id > ? ORDER BY id LIMIT ?"
        key = BIGGEST if newest_first else first - 1
        while True:
            rows = self._query(sql, (*params, key, _PAGE), columns)
            for row in rows:
                stored = chunks.unpack(row["head"], row["layers"] if with_layers else None)
                yield StoredChunk(int(row["id"]), row["attempt"], float(row["received_at"]), stored)
            if len(rows) < _PAGE:
                return
            key = int(rows[-1]["id"])


def _in_range(steps: np.ndarray, start: int | None, end: int | None) -> np.ndarray:
    keep = np.ones(len(steps), dtype=bool)
    if start is not None:
        keep &= steps >= clamp(start)
    if end is not None:
        keep &= steps <= clamp(end)
    return keep


class _Raced(Exception):
    """Another replica rewrote a group while this one did (the transaction rolls back)."""
