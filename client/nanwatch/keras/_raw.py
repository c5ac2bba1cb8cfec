"""A light step's raw vector: its bare reductions, finished into the step vector on the host.

A light step (every-step statistics only; under a stride the host picks it, see ``_instrument``) returns
what it reduced, as it came: the loss, the learning rate, the loss scale, one ``l2_loss`` per gradient, and
per watched output its size and ``_activations.quick`` values. Turning these into the step vector
(segment sums by layer column, square roots, means, the columns of the layout) took about a hundred small
TensorFlow ops, and on CPU each costs executor time however small its input: measured with
``bench/step_overhead.py``'s arms, ~35-70 µs of a 5 ms step (about 1 %). Here the same arithmetic runs in
numpy on the monitor's sender thread, off the training step; the training thread reads only the loss and
the global gradient norm (:meth:`RawLayout.head`, a few Python float operations).

:meth:`RawLayout.finish` makes the vector ``_trace.step_vector`` makes on the device for the same step (a
test compares the records of both paths), so reading it back (``_vector.Layout.unpack``) is shared.
Detail steps, chunks of ``steps_per_execution`` (folded in the graph) and several replicas keep the
device-made vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import numpy as np
import tensorflow as tf

from nanwatch.keras import _norms, _vector
from nanwatch.protocol import LAYER_FIELDS

_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
_FIELD: Final = {name: i for i, name in enumerate(LAYER_FIELDS)}


@dataclass(frozen=True, eq=False)
class RawLayout:
    """Where a light step's raw vector holds what, fixed when the step is traced.

    Raw vector: the scalars present (loss, learning rate, loss scale, in that order), one ``l2_loss`` per
    gradient, one size per watched output, then each output's quick values (``width`` each).
    """

    n_layers: int  # the step vector's layer columns (``_vector.Layout.slots``)
    has_loss: bool
    applied: bool
    scaled: bool
    lso: bool
    grad_ids: np.ndarray  # per gradient: its layer column, or n_layers (no watched layer)
    act_slots: np.ndarray  # per watched output: its layer column
    reader: np.ndarray  # with ``read``: output ``reader[j]`` read the output at position ``read[j]``
    read: np.ndarray
    width: int  # quick values per output: 1 (the sum) or 4 (max, min, sum, max |input|)

    @classmethod
    def of(
        cls,
        n_layers: int,
        *,
        has_loss: bool,
        applied: bool,
        scaled: bool,
        lso: bool,
        grad_slots: Sequence[int],
        act_slots: Sequence[int],
        act_sources: Sequence[Sequence[int]],
        width: int,
    ) -> RawLayout:
        """``act_sources``: per output, the layer columns of the watched layers it read."""
        position = {slot: i for i, slot in enumerate(act_slots)}
        pairs = [(i, position[s]) for i, sources in enumerate(act_sources) for s in sources if s in position]
        return cls(
            n_layers=n_layers,
            has_loss=has_loss,
            applied=applied,
            scaled=scaled,
            lso=lso,
            grad_ids=np.array(_norms.columns(grad_slots, n_layers), np.intp),
            act_slots=np.array(act_slots, np.intp),
            reader=np.array([i for i, _ in pairs], np.intp),
            read=np.array([j for _, j in pairs], np.intp),
            width=width,
        )

    @cached_property  # read on the training thread every step
    def _scalars(self) -> int:
        return int(self.has_loss) + int(self.applied) + int(self.scaled)

    # ------------------------------------------------------------------ device side (while tracing)

    @staticmethod
    def tensor(scalars: Sequence[Any], squares: Sequence[tf.Tensor], outputs: Sequence[Any],
               quicks: Sequence[tf.Tensor]) -> tf.Tensor:  # fmt: skip
        """The raw vector: ``scalars`` (the present ones of loss, lr, scale), then ``squares``, the sizes
        of ``outputs`` and their ``quicks``; a handful of ops whatever the model."""
        pieces = []
        if scalars:
            pieces.append(tf.stack([tf.cast(s, tf.float32) for s in scalars]))
        if squares:
            pieces.append(tf.stack(list(squares)))
        if outputs:
            pieces.append(tf.cast(tf.stack([tf.size(x) for x in outputs]), tf.float32))
            pieces.append(tf.reshape(tf.stack(list(quicks)), [-1]))
        return tf.concat(pieces, 0) if pieces else tf.zeros([0])

    # ------------------------------------------------------------------ host side

    def head(self, raw: np.ndarray) -> tuple[float, float]:
        """The loss (0.0 when none was seen) and the global gradient norm (0.0 on a step the loss scaler
        skipped, as on the device), as Python floats: what the training thread checks every step."""
        values = raw[: self._scalars + len(self.grad_ids)].tolist()
        loss = values[0] if self.has_loss else 0.0
        squares = values[self._scalars :]
        if not squares:
            return loss, 0.0
        norm = _global_norm(sum(squares), values[self._scalars - 1] if self.scaled else 1.0)
        return loss, 0.0 if self.lso and not math.isfinite(norm) else norm

    def finish(self, raw: np.ndarray, layout: _vector.Layout) -> np.ndarray:
        """The step vector (``layout``) the device would have made of this light step."""
        vec = np.zeros(layout.size, np.float32)
        grid = vec[_vector.N_SCALARS :].reshape(len(LAYER_FIELDS), layout.slots)  # a view: fields by column
        raw = raw.astype(np.float64)
        grads_at = self._scalars
        acts_at = grads_at + len(self.grad_ids)
        scalars = raw[:grads_at]
        scale = scalars[-1] if self.scaled else 1.0
        vec[_vector.STEPS] = 1.0
        if self.has_loss:
            vec[_vector.LOSS], vec[_vector.LOSS_N] = scalars[0], 1.0
        if self.scaled:
            vec[_vector.LOSS_SCALE] = scale
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            kept = self._gradients(raw[grads_at:acts_at], scale, vec, grid)
            if self.applied:
                vec[_vector.APPLY_N], vec[_vector.SKIPPED] = 1.0, 1.0 - kept
                vec[_vector.LR] = scalars[int(self.has_loss)]
            self._activations(raw[acts_at:], vec, grid)
        return vec

    def _gradients(self, squares: np.ndarray, scale: float, vec: np.ndarray, grid: np.ndarray) -> float:
        """Write the gradient norms; return 1.0, or 0.0 for a step the loss scaler skips."""
        if not len(squares):
            return 1.0
        n = self.n_layers
        sums = np.bincount(self.grad_ids, weights=squares, minlength=n + 1)
        norms = np.sqrt((2.0 * sums).astype(np.float32)) * np.float32(1.0 / scale)  # float32: the device's overflow
        total = _global_norm(float(squares.sum()), scale)
        kept = 1.0 if not self.lso or math.isfinite(total) else 0.0
        if kept:
            vec[_vector.GRAD_NORM] = total
            grid[_FIELD["grad_norm"], :n] = norms[:n]
        vec[_vector.GRAD_N] = kept
        return kept

    def _activations(self, rest: np.ndarray, vec: np.ndarray, grid: np.ndarray) -> None:
        k = len(self.act_slots)
        if not k:
            return
        sizes = rest[:k]
        quick = rest[k : k + k * self.width].reshape(k, self.width)
        total = quick[:, 2] if self.width > 1 else quick[:, 0]
        slots = self.act_slots
        grid[_FIELD["act_mean"], slots] = total / sizes
        grid[_FIELD["act_frac_nonfinite"], slots] = np.where(np.isfinite(total), 0.0, np.nan)
        vec[_vector.ACT_N] = 1.0
        if self.width > 1:
            top = np.maximum(np.abs(quick[:, 0]), np.abs(quick[:, 1]))
            inputs = quick[:, 3].copy()
            if len(self.read):
                np.maximum.at(inputs, self.reader, top[self.read])
            grid[_FIELD["act_max_abs"], slots] = top
            grid[_FIELD["in_max_abs"], slots] = inputs
            vec[_vector.ACT_TOPS_N] = 1.0


def _global_norm(squares: float, scale: float) -> float:
    """``sqrt(2 * squares)`` unscaled by ``scale`` (times its inverse, as on the device); +Inf where
    ``2 * squares`` overflows float32, as there. The training thread's check and the record share it."""
    doubled = 2.0 * squares
    return (math.inf if doubled > _FLOAT32_MAX else math.sqrt(doubled)) * (1.0 / scale)
