"""One vocabulary: a run status, a health, a severity, a halt policy, an event's or a halt's state is spelled
out once, as a member of its enum in ``nanwatch.vocabulary``, and everywhere else named by that member.

The scan reads the Python source of ``client/`` and ``service/`` (not the pages' JavaScript) and fails on
any string constant equal to one of these words, but those that define an enum member and the few listed
in :data:`OTHER_VOCABULARIES`, where the same word means something else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nanwatch.vocabulary import EventState, HaltPolicy, HaltState, Health, RunStatus
from nanwatch_service.detectors import Severity

REPO = Path(__file__).resolve().parent.parent
ENUMS = (RunStatus, Health, Severity, HaltPolicy, EventState, HaltState)
WORDS = frozenset(str(member) for enum in ENUMS for member in enum)

OTHER_VOCABULARIES = {
    ("service/nanwatch_service/cli.py", "critical"): "a log level of `nanwatch serve --log-level`",
    ("service/nanwatch_service/cli.py", "warning"): "a log level of `nanwatch serve --log-level`",
    ("service/nanwatch_service/cli.py", "info"): "a log level of `nanwatch serve --log-level`",
    ("service/nanwatch_service/local.py", "warning"): "uvicorn's log level",
    ("service/nanwatch_service/api/health.py", "ok"): "the liveness probe's answer, not a run's health",
    ("service/nanwatch_service/alerts.py", "halted"): "the webhook reply's list of the runs it halted",
}
"""``(file, word)``: where a word of the vocabulary stands for something else, and what."""


def spelled_out_words(source: str, words: frozenset[str] = WORDS) -> list[tuple[int, str]]:
    """``(line, word)`` of each string constant in ``source`` equal to one of ``words``, except the values
    that define the members of an enum class (a class with a base named ``...Enum``)."""
    tree = ast.parse(source)
    members = {id(node) for node in _enum_member_values(tree)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in words and id(node) not in members
    ]


def _enum_member_values(tree: ast.AST) -> list[ast.AST]:
    values: list[ast.AST] = []
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef) and any(_name_of(base).endswith("Enum") for base in cls.bases):
            values += [stmt.value for stmt in cls.body if isinstance(stmt, ast.Assign)]
    return values


def _name_of(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _sources() -> list[Path]:
    return sorted([*(REPO / "client").rglob("*.py"), *(REPO / "service").rglob("*.py")])


def test_every_status_health_and_severity_is_named_by_its_enum() -> None:
    found = [
        f"{path}:{line}: {word!r}"
        for file in _sources()
        for path in [file.relative_to(REPO).as_posix()]
        for line, word in spelled_out_words(file.read_text())
        if (path, word) not in OTHER_VOCABULARIES
    ]
    assert not found, "name these words by their member of nanwatch.vocabulary:\n" + "\n".join(found)


def test_every_exception_is_still_needed() -> None:
    needed = {
        (file.relative_to(REPO).as_posix(), word)
        for file in _sources()
        for _, word in spelled_out_words(file.read_text())
    }
    assert set(OTHER_VOCABULARIES) <= needed, f"drop these from OTHER_VOCABULARIES: {set(OTHER_VOCABULARIES) - needed}"


@pytest.mark.parametrize(
    "source",
    [
        'status = "running"',
        'if health == "ok":\n    pass',
        'def f(severity: Literal["info", "warning"]) -> None: ...',
        'halt_on = spec.get("halt_on", "never")',
        'event = {"state": "closed"}',
    ],
)
def test_the_scan_finds_a_planted_word(source: str) -> None:
    assert spelled_out_words(source)


@pytest.mark.parametrize(
    "source",
    [
        'class Status(StrEnum):\n    RUNNING = "running"',
        'class Outcome(enum.Enum):\n    OK = "ok"',
        'def f():\n    """Whether the run is running."""',
        'message = f"run {run_id} is running"',
        "status = RunStatus.RUNNING",
    ],
)
def test_the_scan_leaves_enum_definitions_and_longer_text_alone(source: str) -> None:
    assert spelled_out_words(source) == []


def test_members_are_their_words_on_the_wire() -> None:
    import json

    import msgpack

    assert json.dumps({"status": RunStatus.HALTED}) == '{"status": "halted"}'
    assert msgpack.unpackb(msgpack.packb(Health.CRITICAL)) == "critical"
    assert f"{Severity.WARNING}" == str(Severity.WARNING) == "warning"
    assert {RunStatus.RUNNING: 1}["running"] == 1
