"""EpisodeTracker: per-step findings become episodes that start once, update sparingly and end."""

from __future__ import annotations

from nanwatch_service.detectors import EpisodeTracker, Finding, Severity


def finding(step: int, value: float = 10.0, severity: Severity = "warning", layer: str | None = "dense") -> Finding:
    return Finding("update_ratio", severity, step, layer, value, 1.0, "m", "r")


def test_a_condition_holding_30_steps_starts_one_episode_and_does_not_flood() -> None:
    tracker = EpisodeTracker()
    changes = tracker.update(list(range(30)), [finding(s) for s in range(30)])
    assert [c.kind for c in changes] == ["started"]
    assert changes[0].key == ("update_ratio", "dense")
    assert tracker.open_keys() == {("update_ratio", "dense")}


def test_an_episode_ends_after_five_quiet_steps() -> None:
    tracker = EpisodeTracker()
    tracker.update([0, 1], [finding(0), finding(1)])
    assert tracker.update([2, 3, 4, 5], []) == []
    [ended] = tracker.update([6, 7], [])
    assert (ended.kind, ended.step, ended.finding) == ("ended", 6, finding(1))
    assert tracker.open_keys() == set()


def test_a_short_gap_does_not_end_the_episode() -> None:
    tracker = EpisodeTracker(quiet_steps=5)
    changes = tracker.update(list(range(12)), [finding(s) for s in (0, 1, 2, 5, 9, 11)])
    assert [c.kind for c in changes] == ["started"]


def test_rising_severity_updates_the_episode() -> None:
    tracker = EpisodeTracker()
    changes = tracker.update([0, 1, 2], [finding(0), finding(1, severity="critical"), finding(2, severity="warning")])
    assert [(c.kind, c.step) for c in changes] == [("started", 0), ("updated", 1)]


def test_a_value_that_doubles_its_excess_updates_the_episode() -> None:
    tracker = EpisodeTracker()
    changes = tracker.update([0, 1, 2, 3], [finding(0, 10.0), finding(1, 15.0), finding(2, 20.0), finding(3, 25.0)])
    assert [(c.kind, c.step) for c in changes] == [("started", 0), ("updated", 2)]


def test_a_condition_returning_after_it_ended_starts_a_new_episode() -> None:
    tracker = EpisodeTracker(quiet_steps=2)
    changes = tracker.update([0, 1, 2, 3], [finding(0), finding(3)])
    assert [c.kind for c in changes] == ["started", "ended", "started"]


def test_layers_are_separate_episodes() -> None:
    tracker = EpisodeTracker()
    changes = tracker.update([0], [finding(0, layer="a"), finding(0, layer="b")])
    assert {c.key for c in changes} == {("update_ratio", "a"), ("update_ratio", "b")}


def test_reopening_stored_episodes_counts_no_quiet_steps() -> None:
    tracker = EpisodeTracker(quiet_steps=1)
    changes = tracker.update([], [finding(10, layer="a"), finding(50, layer="b")])
    assert [c.kind for c in changes] == ["started", "started"]
    assert tracker.open_keys() == {("update_ratio", "a"), ("update_ratio", "b")}
