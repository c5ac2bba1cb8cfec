"""The guard: a training step's update reaches the weights only when it is finite.

``optimizer.apply`` runs inside one ``tf.cond`` on whether the global gradient norm (from the per-gradient
``l2_loss``es the step takes anyway) and the learning rate are finite. On a step where they are not, the
update is not applied at all: weights, optimizer slots and ``iterations`` stay as they were, as a loss
scaler leaves them on a step it skips. The record then says ``skipped`` with the non-finite gradient norms
in it, so the service names the layer and, with the default policy, halts a run whose weights are all
still finite. A healthy step pays for the condition only: no host sync, one scalar sum and a branch the
device takes (``bench/step_overhead.py --guard`` measures it). A gradient norm past ~2.6e19, whose square
overflows float32, counts as non-finite: no optimizer makes a sane update of it.

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


def apply_if(finite: tf.Tensor, apply: Callable[[], Any]) -> None:
    """Run ``apply()`` (the optimizer's update) only where ``finite`` holds, all of it or nothing."""

    def update() -> tf.Tensor:
        apply()
        return tf.constant(True)

    tf.cond(finite, update, lambda: tf.constant(False))
