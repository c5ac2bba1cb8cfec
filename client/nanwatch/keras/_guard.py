"""The guard: a training step's update reaches the weights only when it is finite.

``optimizer.apply`` runs inside one ``tf.cond`` on whether the global gradient norm (from the per-gradient
``l2_loss``es the step takes anyway) and the learning rate are finite. On a step where they are not, the
update is not applied at all: weights, optimizer slots and ``iterations`` stay as they were, as a loss
scaler leaves them on a step it skips. The record then says ``skipped`` with the non-finite gradient norms
in it, so the service names the layer and, with the default policy, halts a run whose weights are all
still finite. A healthy step pays for the condition only: no host sync, one scalar sum and a branch the
device takes (``bench/step_overhead.py --guard`` measures it). A gradient norm past ~2.6e19, whose square
overflows float32, counts as non-finite: no optimizer makes a sane update of it.

The condition needs every gradient, so no weight is updated before the backward pass ends; the updates
are then chained one variable after the other (:class:`Serial`, through ``optimizer.update_step``), as
they came when each followed its own gradient: released all at once they oversubscribed a small CPU.

Under a ``LossScaleOptimizer`` the scaler's own skip (every gradient finite, or none of the update) is the
guard: a second condition around it would stop it from halving its scale. A strategy that needs
``merge_call`` inside ``apply`` (``MirroredStrategy``) cannot run it under a ``tf.cond`` in a replica
context, so there the guard is off (said once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf


def available() -> bool:
    """Whether the step being traced can run the optimizer's update under a ``tf.cond``."""
    if not tf.distribute.has_strategy():
        return True
    return bool(tf.__internal__.distribute.strategy_supports_no_merge_call())


def finite_update(squares: Sequence[tf.Tensor], lr: tf.Tensor) -> tf.Tensor:
    """Whether the update from gradients with these ``l2_loss``es at learning rate ``lr`` is finite."""
    return tf.math.is_finite(tf.add_n(list(squares)) + lr)


class Serial:
    """The optimizer's per-variable updates, one after the other within a step.

    Held back until every gradient is known, the updates would all become ready at once; TensorFlow's
    inter-op threads then run several of them side by side, each splitting its element-wise ops over the
    intra-op threads as well. On a 2-vCPU machine that oversubscription cost the benchmark MLP ~9 % of its
    step (with ``TF_NUM_INTEROP_THREADS=1`` the same guard cost 0.5 %). One after the other, each update
    still uses every core for its own ops.
    """

    def __init__(self) -> None:
        self.last: list[Any] = []  # the last update's token, within the step being traced

    def start(self) -> None:
        """A step's updates begin (the tokens of another trace must not leak in)."""
        self.last = []

    def wrap(self, update_step: Callable[..., Any]) -> Callable[..., Any]:
        """``optimizer.update_step`` made to run after the previous variable's update."""

        def serial_update_step(gradient: Any, variable: Any, learning_rate: Any) -> Any:
            with tf.control_dependencies(self.last):
                result = update_step(gradient, variable, learning_rate)
            self.last = [tf.convert_to_tensor(variable)]  # read after the update (same resource)
            return result

        return serial_update_step


def apply_if(finite: tf.Tensor, apply: Callable[[], Any]) -> None:
    """Run ``apply()`` (the optimizer's update) only where ``finite`` holds, all of it or nothing."""

    def update() -> tf.Tensor:
        apply()
        return tf.constant(True)

    tf.cond(finite, update, lambda: tf.constant(False))
