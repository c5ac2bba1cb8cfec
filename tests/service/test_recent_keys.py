"""Re-sent records are recognised by (attempt, step, wall time) and stored once; nothing else is dropped."""

from __future__ import annotations

from nanwatch.columns import StepColumns
from nanwatch_service.run_state import RecentKeys


def _columns(steps: list[int], wall: float = 0.0) -> StepColumns:
    return StepColumns.from_records([{"step": s, "wall_time": wall + s} for s in steps])


def test_rising_batches_are_all_fresh_and_a_re_sent_one_is_not() -> None:
    keys = RecentKeys()
    assert keys.fresh("a", _columns([0, 1, 2])).tolist() == [True] * 3
    assert keys.fresh("a", _columns([3, 4])).tolist() == [True, True]
    assert keys.fresh("a", _columns([3, 4])).tolist() == [False, False]  # the reply was lost
    assert keys.fresh("a", _columns([4, 5])).tolist() == [False, True]  # a partly re-sent batch


def test_the_same_steps_from_another_attempt_or_at_another_time_are_new() -> None:
    keys = RecentKeys()
    keys.fresh("a", _columns([0, 1, 2]))
    assert keys.fresh("b", _columns([0, 1, 2])).tolist() == [True] * 3  # a resumed job
    assert keys.fresh("a", _columns([1], wall=100.0)).tolist() == [True]  # the same step, later: a new record


def test_a_batch_that_repeats_a_record_holds_it_once() -> None:
    assert RecentKeys().fresh("a", _columns([7, 7, 8])).tolist() == [True, False, True]


def test_only_the_last_records_are_remembered() -> None:
    keys = RecentKeys(size=4)
    keys.fresh("a", _columns([0, 1, 2, 3, 4, 5]))
    again = keys.fresh("a", _columns([0, 1, 2, 3, 4, 5]))
    assert again.tolist() == [True, True, False, False, False, False]
