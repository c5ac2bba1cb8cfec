"""The one place nanwatch touches Keras' private train-function machinery.

Keras 3's TensorFlow trainer builds ``model.train_function`` from ``model.train_step`` with the private
``model._make_function(step)``: it wraps the step in ``distribute_strategy.run``, a ``tf.function``
(XLA when ``jit_compile``) and the ``steps_per_execution`` loop. nanwatch uses it to build two train
functions from two variants of one wrapped step (a light one and a detail one, see ``_instrument``), and
otherwise only public API (``make_train_function(force=True)`` and the ``train_function`` attribute).

Checked against Keras 3.15.1 and 3.7.0, the oldest release with ``_make_function`` (``tests/keras`` pass
on both with TensorFlow 2.21; README "Keras versions"). Where ``_make_function`` is missing (Keras 3.0 to
3.6) :func:`can_build` says so and the callback picks its detail steps with an in-graph step counter
instead of a second train function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

Step = Callable[[Any], Any]


def can_build(model: keras.Model) -> bool:
    """Whether Keras can build a train function around a step function of ours."""
    return callable(getattr(model, "_make_function", None))


def build(model: keras.Model, step: Step) -> Callable[[Any], Any]:
    """A train function as Keras builds its own (distribution, ``tf.function``, step loop), running
    ``step`` instead of ``model.train_step``. Only where :func:`can_build`."""
    return model._make_function(step)  # type: ignore[no-any-return]


def rebuild(model: keras.Model) -> Callable[[Any], Any]:
    """Keras' train function built afresh from the model's current ``train_step`` (the next call traces)."""
    model.make_train_function(force=True)
    return model.train_function  # type: ignore[no-any-return]


def install(model: keras.Model, function: Callable[[Any], Any]) -> None:
    """Make ``fit`` call ``function`` for each step (until the next :func:`rebuild`)."""
    model.train_function = function


def build_optimizer(optimizer: keras.optimizers.Optimizer, variables: list[Any]) -> None:
    """Build ``optimizer`` for ``variables`` as its ``apply`` would on the first step (public API)."""
    if not optimizer.built:
        with keras.name_scope(optimizer.name, caller=optimizer):
            optimizer.build(variables)
        optimizer.built = True
