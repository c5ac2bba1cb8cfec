"""Step history as chunks: one row per ingest request, holding that request's records as packed columns.

A chunk row has ``run_id``, ``id`` (increasing in arrival order), ``attempt``, ``received_at``, the step
range (``min_step``, ``max_step``), ``n``, and two blobs: ``head`` (the steps, the scalars and what is
present) and ``layers`` (the per-layer statistics, steps × layers × statistics). Both are msgpack maps of
protocol 2's packed arrays, so NaN and infinities stay bit for bit, and reading the scalars of a long run
never touches its per-layer blobs.

A record's ``seq`` (its place in arrival order, what the REST history pages by) is
``id * SEQ_STRIDE + index within the chunk``: chunks hold at most ``MAX_RECORDS`` < ``SEQ_STRIDE`` records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np

from nanwatch import protocol
from nanwatch.columns import StepColumns

SEQ_STRIDE: Final = 1 << 16
assert protocol.MAX_RECORDS < SEQ_STRIDE


@dataclass(frozen=True, eq=False)
class StoredChunk:
    """One stored chunk: where it stands in arrival order, which attempt sent it, and its records."""

    id: int
    attempt: str
    received_at: float
    columns: StepColumns

    @property
    def seqs(self) -> np.ndarray:
        """Each record's ``seq``."""
        return self.id * SEQ_STRIDE + np.arange(self.columns.n, dtype=np.int64)


def pack(columns: StepColumns) -> tuple[bytes, memoryview]:
    """The ``head`` blob (a msgpack map: steps, scalar names and values, statistic names, the layer count,
    every column's presence) and the ``layers`` blob (the per-layer statistics as they travel in protocol 2:
    little-endian float64, steps × layers × statistics, with no wrapping, so a batch's own array is
    written as it came)."""
    wire = protocol.columns_to_wire(columns, layers=False)
    layers = np.ascontiguousarray(columns.layers, dtype=protocol.FLOAT_DTYPE)
    return msgpack.packb(wire, use_bin_type=True), layers.reshape(-1).view(np.uint8).data


def unpack(head: bytes | memoryview, layers: bytes | memoryview | None) -> StepColumns:
    """The columns of a chunk; without its ``layers`` blob, the per-layer statistics read absent."""
    message: dict[str, Any] = msgpack.unpackb(bytes(head), raw=False)
    if layers is None:
        message.update(n_layers=0, layer_values=b"", layer_stats=[], present=_scalars_only(message))
    else:
        message["layer_values"] = bytes(layers)
    return protocol.decode_steps({"protocol": 2, **message}).columns


def _scalars_only(message: dict[str, Any]) -> bytes | None:
    present = message.get("present")
    if present is None:
        return None
    k, s = len(message["scalars"]), len(message["layer_stats"])
    flags = np.frombuffer(present, dtype=np.uint8).reshape(-1, k + s)
    return flags[:, :k].tobytes()
