"""The detection engine on the public scenarios, through the real Keras callback and the real service.

Diverging runs are warned before their first non-finite value and the gradual ones are stopped while
every weight is still finite; healthy runs that merely look alarming raise nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import expected_halts
from tests.scenarios import SCENARIOS
from tests.scenarios.monitored import Outcome, run_with_nanwatch

pytestmark = pytest.mark.tf
Watch = Callable[[str], Outcome]


@pytest.fixture(scope="module")
def watched(url: str) -> Iterator[Watch]:
    """Run a scenario under nanwatch once per module; later tests of the same scenario reuse the outcome."""
    outcomes: dict[str, Outcome] = {}

    def watch(name: str) -> Outcome:
        if name not in outcomes:
            outcomes[name] = run_with_nanwatch(name, url)
        return outcomes[name]

    with expected_halts():
        yield watch


def _describe(outcome: Outcome) -> str:
    lines = [f"{e['severity_steps']} {e['detector']} [{e['layer']}] {e['message']}" for e in outcome.events]
    return "\n".join([str(outcome), *lines])


@pytest.mark.parametrize("name", ["S5", "S6", "S7"])
def test_gradual_divergence_is_warned_at_least_three_steps_before_the_first_nonfinite(
    watched: Watch, name: str
) -> None:
    outcome = watched(name)
    assert outcome.first_warning is not None, _describe(outcome)
    assert outcome.lead is not None and outcome.lead >= 3, _describe(outcome)


@pytest.mark.parametrize("name", ["S5", "S6"])
def test_gradual_divergence_is_stopped_while_every_weight_is_finite(watched: Watch, name: str) -> None:
    outcome = watched(name)
    first_nonfinite = SCENARIOS[name].expected_first_nonfinite
    assert outcome.stopped_at is not None and first_nonfinite is not None, _describe(outcome)
    assert outcome.stopped_at < first_nonfinite and outcome.weights_finite_at_stop, _describe(outcome)


@pytest.mark.parametrize("name", [name for name, scenario in SCENARIOS.items() if scenario.diverges])
def test_every_diverging_run_is_halted_with_every_weight_finite(watched: Watch, name: str) -> None:
    """Sudden blow-ups too (S3 is NaN at its first step): the guard keeps the non-finite update out."""
    outcome = watched(name)
    assert outcome.stopped_at is not None and outcome.weights_finite_at_stop, _describe(outcome)


def test_division_by_zero_variance_is_critical_at_step_zero_naming_the_custom_layer(watched: Watch) -> None:
    outcome = watched("S3")
    assert outcome.first_critical == 0 and outcome.stopped_at == 0, _describe(outcome)
    critical = [e for e in outcome.events if e["severity"] == "critical"]
    assert critical[0]["layer"] == "my_custom_layer" and "epsilon" in critical[0]["remedy"], _describe(outcome)


def test_epsilon_variant_warns_of_amplification_in_the_custom_layer_without_halting(watched: Watch) -> None:
    outcome = watched("S4")
    assert outcome.stopped_at is None, _describe(outcome)
    amplification = [e for e in outcome.events if e["detector"] == "amplification"]
    assert amplification and amplification[0]["layer"] == "my_custom_layer", _describe(outcome)
    assert all(e["severity"] != "critical" for e in outcome.events), _describe(outcome)


@pytest.mark.parametrize("name", ["S1", "S2", "S8a", "S8b", "S8c"])
def test_healthy_runs_that_look_alarming_raise_no_warning_and_no_halt(watched: Watch, name: str) -> None:
    outcome = watched(name)
    assert outcome.events == [] and outcome.stopped_at is None, _describe(outcome)
