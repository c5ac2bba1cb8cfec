"""Downsampling for plots: the envelope and every non-finite value survive, within the point budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanwatch_service.downsample import bucket_of, downsample, top_layers


def _all(n: int) -> np.ndarray:
    return np.ones(n, dtype=bool)


def test_a_one_step_spike_and_dip_in_100k_steps_are_kept() -> None:
    steps = np.arange(100_000, dtype=np.int64)
    values = np.full(100_000, 1.0)
    values[31_337], values[77_777] = 1e30, 1e-30
    line = downsample(steps, values, _all(100_000), points=1000)
    assert len(line.steps) <= 2000 and list(line.steps) == sorted(line.steps)
    assert (31_337, 1e30) in zip(line.steps.tolist(), line.values.tolist(), strict=True)
    assert (77_777, 1e-30) in zip(line.steps.tolist(), line.values.tolist(), strict=True)


def test_nan_and_inf_are_marks_at_their_first_step_per_bucket_never_line_values() -> None:
    steps = np.arange(1000, dtype=np.int64)
    values = np.linspace(1.0, 2.0, 1000)
    values[[10, 11, 500]] = math.nan
    values[700] = math.inf
    values[[900, 901]] = -math.inf
    line = downsample(steps, values, _all(1000), points=10)
    assert np.isfinite(line.values).all()
    assert line.nan.tolist() == [10, 500] and line.inf.tolist() == [700] and line.neg_inf.tolist() == [900]
    assert line.to_json()["-inf"] == [900]


def test_values_not_measured_are_neither_points_nor_marks() -> None:
    steps = np.arange(6, dtype=np.int64)
    values = np.array([1.0, math.nan, 3.0, math.nan, 5.0, math.nan])
    present = np.array([True, False, True, False, True, True])
    line = downsample(steps, values, present, points=100)
    assert line.steps.tolist() == [0, 2, 4] and line.nan.tolist() == [5]


def test_fewer_steps_than_points_keeps_every_value_in_step_order() -> None:
    steps = np.array([3, 1, 2, 7], dtype=np.int64)
    line = downsample(steps, np.array([30.0, 10.0, 20.0, 70.0]), _all(4), points=1000)
    assert line.steps.tolist() == [1, 2, 3, 7] and line.values.tolist() == [10.0, 20.0, 30.0, 70.0]


def test_buckets_are_equal_ranges_of_steps_never_more_than_asked() -> None:
    assert bucket_of(np.arange(10, 20, dtype=np.int64), 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert bucket_of(np.zeros(0, dtype=np.int64), 3).tolist() == []
    with pytest.raises(ValueError, match="points"):
        downsample(np.arange(3, dtype=np.int64), np.ones(3), _all(3), points=0)


def test_top_layers_puts_the_first_to_turn_nonfinite_first_then_the_largest() -> None:
    values = np.array([[1.0, 5.0, 2.0, 0.0], [1.0, 6.0, math.nan, math.inf], [1.0, 7.0, math.nan, 0.0]])
    assert top_layers(values, _all(3), 3) == [2, 3, 1]
    assert top_layers(values, np.zeros(3, dtype=bool), 2) == [0, 1]


series = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.just(math.nan)), min_size=1, max_size=300
)


@given(series, st.integers(1, 50))
def test_the_line_spans_the_finite_range_and_every_nonfinite_kind_is_marked(values: list[float], points: int) -> None:
    array = np.array(values)
    line = downsample(np.arange(len(values), dtype=np.int64), array, _all(len(values)), points)
    finite = array[np.isfinite(array)]
    assert len(line.steps) <= 2 * points and len(line.nan) <= points
    if len(finite):
        assert line.values.min() == finite.min() and line.values.max() == finite.max()
    assert bool(len(line.nan)) == bool(np.isnan(array).any())
    assert bool(len(line.inf)) == bool((array == math.inf).any())
    assert bool(len(line.neg_inf)) == bool((array == -math.inf).any())
