"""Recovery on the public scenarios, through the real Keras callback and the real service.

With ``recover=True`` a diverging run that a lower learning rate can save trains to its last epoch with
every weight finite, each recovery an event with what it did; one whose NaN comes from the code and the
data (S3's division by a zero variance) comes back whatever the learning rate, and is halted after
``max_recoveries`` with every weight finite. A healthy run is not touched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import expected_halts
from tests.scenarios import SCENARIOS, fit_steps
from tests.scenarios.monitored import Outcome, run_with_nanwatch

pytestmark = pytest.mark.tf
Recover = Callable[[str], Outcome]
RECOVERABLE = ["S5", "S6", "S7"]
DETAILS = {"command_id", "recovery", "rolled_back_to", "batches_skipped", "lr", "lr_factor"}


@pytest.fixture(scope="module")
def recovered(url: str) -> Iterator[Recover]:
    """Run a scenario for all its epochs with recovery, once per module."""
    outcomes: dict[str, Outcome] = {}

    def recover(name: str) -> Outcome:
        if name not in outcomes:
            outcomes[name] = run_with_nanwatch(name, url, every_epoch=True, recover=True)
        return outcomes[name]

    with expected_halts():
        yield recover


def _describe(outcome: Outcome) -> str:
    lines = [f"{e['step']} {e['message']} {e['details']}" for e in outcome.recoveries]
    return "\n".join([str({**vars(outcome), "losses": None, "events": None}), *lines])


@pytest.mark.parametrize("name", RECOVERABLE)
def test_a_recoverable_run_trains_every_epoch_with_finite_weights(recovered: Recover, name: str) -> None:
    outcome = recovered(name)
    assert outcome.stopped_at is None and outcome.steps_run == fit_steps(SCENARIOS[name]), _describe(outcome)
    assert outcome.weights_finite_at_stop, _describe(outcome)
    assert outcome.status == "finished", _describe(outcome)  # not halted: the recovery answered the halt
    first_nonfinite = SCENARIOS[name].expected_first_nonfinite
    assert first_nonfinite is not None and all(math.isfinite(loss) for loss in outcome.losses[first_nonfinite:])


@pytest.mark.parametrize("name", RECOVERABLE)
def test_each_recovery_is_an_event_with_what_it_did(recovered: Recover, name: str) -> None:
    outcome = recovered(name)
    assert 1 <= len(outcome.recoveries) <= 3, _describe(outcome)
    lr = 0.0
    for number, event in enumerate(outcome.recoveries, start=1):
        details = event["details"]
        assert set(details) == DETAILS and details["recovery"] == number, _describe(outcome)
        assert event["detector"] == "recovery" and event["severity"] == "info"
        assert details["batches_skipped"] == event["step"] + 1 - details["rolled_back_to"] >= 1
        assert details["command_id"] and details["lr_factor"] == 0.5**number
        assert lr == 0.0 or details["lr"] == pytest.approx(lr / 2)
        lr = details["lr"]


def test_a_nan_from_the_code_comes_back_and_is_halted_after_max_recoveries(url: str) -> None:
    with expected_halts():
        outcome = run_with_nanwatch("S3", url, recover=True, max_recoveries=2)
    assert [e["details"]["recovery"] for e in outcome.recoveries] == [1, 2], _describe(outcome)
    assert outcome.stopped_at is not None and outcome.weights_finite_at_stop, _describe(outcome)
    assert outcome.status == "halted"


def test_a_run_that_recovers_logs_its_recoveries_and_never_says_it_is_halting(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nanwatch")
    outcome = run_with_nanwatch("S5", url, recover=True)
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("nanwatch")]
    assert outcome.stopped_at is None and outcome.recoveries, _describe(outcome)
    assert any("recover" in message for message in messages), messages
    assert not any("halting run" in message for message in messages), messages


def test_a_run_halted_after_its_recoveries_says_so_once(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nanwatch")
    outcome = run_with_nanwatch("S3", url, recover=True, max_recoveries=2)
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("nanwatch")]
    assert outcome.stopped_at is not None, _describe(outcome)
    halting = [message for message in messages if "halting run" in message]
    assert len(halting) == 1 and "(detector)" in halting[0], messages
