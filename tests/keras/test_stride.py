"""The detail steps' schedule (``nanwatch.keras._stride``), fed step times directly."""

from __future__ import annotations

import pytest

from nanwatch.keras._stride import BUDGET, HIGHEST, LOWEST, Schedule, choose

LIGHT = 0.005


def _costing(k: float) -> float:
    """A detail step's time such that every k-th step adds the budget: ``choose`` picks ``ceil(k)``."""
    return LIGHT * (1 + k * BUDGET)


@pytest.mark.parametrize(
    ("light", "detail", "expected"),
    [
        (LIGHT, _costing(29.5), 30),  # every 30th step adds the budget
        (LIGHT, _costing(3), LOWEST),  # cheap: every 10th
        (LIGHT, 0.0049, LOWEST),  # faster than light (noise): every 10th
        (LIGHT, 0.1, HIGHEST),  # +1900 %: every 100th (at most 19 % then)
        (0.0, 0.001, LOWEST),  # nothing measured
    ],
)
def test_the_stride_keeps_the_details_extra_time_within_the_budget(light: float, detail: float, expected: int) -> None:
    assert choose(light, detail) == expected
    k = choose(light, detail)
    if LOWEST < k < HIGHEST:
        assert (detail - light) / (k * light) <= BUDGET < (detail - light) / ((k - 1) * light)


def _run(schedule: Schedule, steps: range, light: float, detail: float, traced: int = 0) -> list[int]:
    """Steps as the instrumented train function runs them; returns the detail steps."""
    details = []
    for step in steps:
        due = schedule.due(step)
        schedule.ran(step, due)
        if step - steps.start >= traced:
            schedule.timed(detail if due else light, due)
        if due:
            details.append(step)
    return details


def test_auto_starts_at_every_10th_step_then_spaces_the_details_by_their_cost() -> None:
    schedule = Schedule("auto")
    schedule.start(0)

    details = _run(schedule, range(200), light=LIGHT, detail=_costing(49.5))  # every 50th step

    assert details[:2] == [0, 10] and schedule.stride == 50
    assert details == [0, 10, 60, 110, 160]


def test_auto_follows_a_change_in_cost_and_ignores_an_outlier() -> None:
    schedule = Schedule("auto")
    schedule.start(0)
    _run(schedule, range(100), light=LIGHT, detail=_costing(49.5))
    assert schedule.stride == 50

    schedule.timed(5.0, True)  # one detail step that stalled: the median of the recent ones holds
    assert schedule.stride == 50
    details = _run(schedule, range(100, 1000), light=LIGHT, detail=_costing(2))  # details became cheap
    assert schedule.stride == LOWEST
    assert details[-2:] == [details[-1] - LOWEST, details[-1]]


def test_a_fixed_stride_keeps_to_its_multiples_and_is_not_timed() -> None:
    schedule = Schedule(7)
    schedule.start(37)  # a fit resuming at step 37

    details = _run(schedule, range(37, 80), light=LIGHT, detail=0.5)

    assert details == [42, 49, 56, 63, 70, 77] and schedule.stride == 7


def test_auto_takes_details_at_the_first_step_of_each_fit() -> None:
    auto, fixed = Schedule("auto"), Schedule(10)
    auto.start(37)
    fixed.start(37)
    assert auto.due(37) and not fixed.due(37) and fixed.due(40)
