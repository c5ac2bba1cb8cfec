"""Small models and data for the callback tests, and an independent per-step reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

FEATURES = 8


def data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, FEATURES)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def sequential() -> keras.Model:
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(8, activation="tanh", name="squash"),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip


def functional() -> keras.Model:
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    inner = keras.Sequential([keras.layers.Dense(8, activation="tanh", name="squash")], name="inner")
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(inner(hidden)))


class Subclassed(keras.Model):
    """Layers assigned out of forward order, to check that the table follows the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.head = keras.layers.Dense(1, name="head")
        self.hidden = keras.layers.Dense(16, activation="relu", name="hidden")
        self.squash = keras.layers.Dense(8, activation="tanh", name="squash")

    def call(self, x: Any) -> Any:
        return self.head(self.squash(self.hidden(x)))


class HalfLog(keras.layers.Layer):
    """Passes column 0 through and takes the log of column 1: NaN there for a negative input."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.concatenate([inputs[:, :1], keras.ops.log(inputs[:, 1:2])], axis=1)


class FirstColumn(keras.layers.Layer):
    """Column 0 only: drops whatever HalfLog made of column 1."""

    def call(self, inputs: Any) -> Any:
        return inputs[:, :1]


BUILDERS = {"sequential": sequential, "functional": functional, "subclassed": Subclassed}


def compiled(kind: str, seed: int = 1, **compile_kwargs: Any) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = BUILDERS[kind]()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", **compile_kwargs)
    model(np.zeros((1, FEATURES), "float32"))
    return model


@dataclass
class Reference:
    """Each step recomputed eagerly on a twin of the model: its loss, gradients, weights before/after."""

    losses: list[float] = field(default_factory=list)
    grads: list[list[np.ndarray]] = field(default_factory=list)
    before: list[list[np.ndarray]] = field(default_factory=list)
    after: list[list[np.ndarray]] = field(default_factory=list)

    def layer_grad_norms(self, step: int, groups: list[list[int]]) -> list[float]:
        return [float(np.sqrt(sum(np.sum(self.grads[step][i] ** 2) for i in g))) for g in groups]

    def grad_norm(self, step: int) -> float:
        return float(np.sqrt(sum(np.sum(g**2) for g in self.grads[step])))


def reference(twin: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, steps: int) -> Reference:
    """Train ``twin`` (same weights as the watched model before fit) step by step with a GradientTape."""
    loss_fn = keras.losses.MeanSquaredError()
    optimizer = keras.optimizers.Adam(1e-2)
    ref = Reference()
    for step in range(steps):
        start = (step * batch_size) % len(x)
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, twin(xb, training=True))
        grads = tape.gradient(loss, twin.trainable_variables)
        ref.losses.append(float(loss))
        ref.grads.append([g.numpy() for g in grads])
        ref.before.append([v.numpy() for v in twin.trainable_variables])
        optimizer.apply(grads, twin.trainable_variables)
        ref.after.append([v.numpy() for v in twin.trainable_variables])
    return ref


def twin_of(kind: str, model: keras.Model) -> keras.Model:
    twin = BUILDERS[kind]()
    twin(np.zeros((1, FEATURES), "float32"))
    twin.set_weights(model.get_weights())
    return twin
