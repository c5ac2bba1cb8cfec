"""The statistics themselves, mostly through the custom-loop helpers: scale safety, NaN masking, the layer table."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nanwatch.keras import _activations, capture_activations, layer_table, step_statistics
from tests.keras import models

pytestmark = pytest.mark.tf


def _numpy(stats: dict) -> dict:
    out = {k: float(v) for k, v in stats.items() if k != "layers"}
    out["layers"] = {k: np.asarray(v).tolist() for k, v in stats["layers"].items()}
    return out


def _dense() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid", name="gate")])
    model(np.zeros((1, 4), "float32"))
    return model


def test_norms_stay_finite_and_exact_when_squares_overflow() -> None:
    model = _dense()
    kernel, bias = (np.full(v.shape, 1e30, "float32") for v in model.trainable_variables)

    stats = _numpy(step_statistics(model, [tf.constant(kernel), tf.constant(bias)]))

    expected = 1e30 * math.sqrt(kernel.size + bias.size)
    assert stats["grad_norm"] == pytest.approx(expected, rel=1e-5)
    assert stats["layers"]["grad_norm"] == pytest.approx([expected], rel=1e-5)
    assert stats["layers"]["grad_mean_abs"] == pytest.approx([1e30], rel=1e-5)


@pytest.mark.parametrize(("bad", "expected"), [(math.inf, math.inf), (math.nan, math.nan)])
def test_a_norm_is_non_finite_exactly_when_an_element_is(bad: float, expected: float) -> None:
    model = _dense()
    kernel = np.ones((4, 3), "float32")
    kernel[1, 2] = bad

    stats = _numpy(step_statistics(model, [tf.constant(kernel), tf.zeros([3])]))

    for value in (stats["grad_norm"], stats["layers"]["grad_norm"][0]):
        assert (math.isnan(value) and math.isnan(expected)) or value == expected


def test_activation_statistics_mask_non_finite_values() -> None:
    model = _dense()
    output = tf.constant([[1.0, math.nan, 0.0], [math.inf, 2.0, 1.0]])

    stats = _numpy(step_statistics(model, [None, None], activations={"gate": output}))
    layer = {k: v[0] for k, v in stats["layers"].items()}

    assert layer["act_frac_nonfinite"] == pytest.approx(2 / 6)
    assert layer["act_max_abs"] == math.inf  # ±Inf shows; NaN is left out
    assert layer["act_mean"] == pytest.approx(1.0)  # over the finite values 1, 0, 2, 1
    assert layer["act_std"] == pytest.approx(np.std([1.0, 0.0, 2.0, 1.0]))
    assert layer["act_frac_zero"] == pytest.approx(1 / 6)
    assert layer["act_frac_saturated"] == pytest.approx(5 / 6)  # at or beyond the sigmoid bounds 0 and 1
    assert layer["act_frac_zero_var"] == 0.0


def test_zero_variance_rows_and_constant_layers() -> None:
    model = _dense()
    output = tf.constant([[0.5, 0.5, 0.5], [0.2, 0.5, 0.9]])

    layer = _numpy(step_statistics(model, [None, None], activations={"gate": output}))["layers"]

    assert layer["act_frac_zero_var"] == [0.5]
    constant = _numpy(step_statistics(model, [None, None], activations={"gate": tf.fill([4, 3], 0.1)}))
    assert constant["layers"]["act_std"] == [0.0]  # exactly, not a rounding residue


@pytest.mark.parametrize("shape", [(6,), (6, 1), (6, 5), (6, 3, 2, 2)])
def test_row_extremes_give_the_same_max_and_min_and_count_constant_rows(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    x[1] = 0.25  # a constant row
    if len(shape) > 1:
        x[4] = 0.0
    inputs = [tf.constant([[-3.0, 2.0]])]

    whole = _activations.quick(tf.constant(x), inputs).numpy()
    by_rows = _activations.quick(tf.constant(x), inputs, rows=True).numpy()

    np.testing.assert_array_equal(by_rows[:4], whole)  # max, min, sum, max |input|: the same numbers
    rows = x.reshape(shape[0], -1)
    constant = float(np.sum(rows.max(axis=1) == rows.min(axis=1))) if rows.shape[1] > 1 else 0.0
    assert by_rows[4] == constant == (2.0 if rows.shape[1] > 1 else 0.0)


def test_a_custom_training_loop_gets_the_callback_statistics() -> None:
    model = models.compiled("sequential")
    x, y = models.data(n=16)
    optimizer = keras.optimizers.Adam(1e-2)

    with tf.GradientTape() as tape, capture_activations(model) as acts:
        loss = keras.losses.MeanSquaredError()(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    before = [tf.identity(v) for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    stats = _numpy(step_statistics(model, grads, loss=loss, lr=optimizer.learning_rate,
                                   previous_weights=before, activations=acts))  # fmt: skip

    assert [row["name"] for row in layer_table(model)] == ["hidden", "squash", "head"]
    assert not any("call" in vars(layer) for layer in model.layers)  # capture restored them
    assert stats["loss"] == pytest.approx(float(loss))
    assert stats["lr"] == pytest.approx(1e-2)
    assert stats["grad_norm"] == pytest.approx(float(tf.linalg.global_norm(grads)), rel=1e-5)
    relu = model.get_layer("hidden")(x).numpy()  # after the update: only the zero fraction is comparable
    assert 0.0 < stats["layers"]["act_frac_zero"][0] < 1.0 and relu.shape == (16, 16)
    assert stats["layers"]["in_max_abs"][0] == pytest.approx(float(np.abs(x).max()))
    assert all(v > 0 for v in stats["layers"]["update_norm"])


def test_the_layer_table_carries_each_layers_compute_dtype() -> None:
    keras.config.set_dtype_policy("mixed_float16")  # fresh_keras restores the policy
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(2, name="logits"),
        keras.layers.Activation("softmax", dtype="float32", name="probs"),  # Keras' advice for the output
    ])  # fmt: skip
    assert [(row["name"], row["dtype"]) for row in layer_table(model)] == [
        ("hidden", "float16"),
        ("logits", "float16"),
        ("probs", "float32"),
    ]
