"""ARCHITECTURE.md names real code: every backticked dotted name of ``nanwatch`` or ``nanwatch_service`` in it
resolves to a module, and within it to a class, function, method or constant.

Names are looked up in the source (parsed, not imported), so that the Keras modules are checked without
importing TensorFlow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"nanwatch": REPO / "client" / "nanwatch", "nanwatch_service": REPO / "service" / "nanwatch_service"}
DOTTED = re.compile(r"`((?:nanwatch|nanwatch_service)(?:\.\w+)+)`")


def dotted_names(text: str) -> list[str]:
    """The backticked ``nanwatch...``/``nanwatch_service...`` dotted names in ``text``, in order, once each."""
    return list(dict.fromkeys(DOTTED.findall(text)))


def resolves(name: str, roots: dict[str, Path] = ROOTS) -> bool:
    """Whether ``name`` is a module under ``roots``, or a name defined (or imported) in one, followed by the
    classes and methods it names."""
    parts = name.split(".")
    path = roots[parts[0]]
    rest = parts[1:]
    while rest and ((path / rest[0]).is_dir() or (path / f"{rest[0]}.py").is_file()):
        path = path / rest.pop(0)
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not rest:
        return source.is_file()
    return _defines(ast.parse(source.read_text()).body, rest)


def _defines(body: list[ast.stmt], names: list[str]) -> bool:
    first, rest = names[0], names[1:]
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == first:
            return not rest or (isinstance(node, ast.ClassDef) and _defines(node.body, rest))
        if not rest and first in _assigned_or_imported(node):
            return True
    return False


def _assigned_or_imported(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    if isinstance(node, ast.ImportFrom):
        return {alias.asname or alias.name for alias in node.names}
    return set()


def test_architecture_names_only_code_that_exists() -> None:
    names = dotted_names((REPO / "ARCHITECTURE.md").read_text())
    assert len(names) > 40, "ARCHITECTURE.md should walk the request through the code by name"
    missing = [name for name in names if not resolves(name)]
    assert not missing, f"ARCHITECTURE.md names code that does not exist: {missing}"


def test_the_readme_links_the_architecture() -> None:
    assert "(ARCHITECTURE.md)" in (REPO / "README.md").read_text()


@pytest.mark.parametrize(
    "name",
    [
        "nanwatch.protocol.encode_batch",
        "nanwatch_service.engine.Engine.ingest",
        "nanwatch_service.detectors.pipeline.DEFAULT_DETECTORS",
        "nanwatch_service.store",
        "nanwatch_service.store.open_store",
        "nanwatch_service.detectors.Pipeline",
    ],
)
def test_a_real_name_resolves(name: str) -> None:
    assert resolves(name)


@pytest.mark.parametrize(
    "name",
    [
        "nanwatch.protocol.encode_batches",
        "nanwatch_service.engine.Engine.digest",
        "nanwatch_service.engine.Engine.ingest.batch",
        "nanwatch_service.nowhere.Engine",
        "nanwatch_service.detectors.context.RunState",
        "nanwatch_service.detectors.context.RunHistory",
    ],
)
def test_a_made_up_name_does_not(name: str) -> None:
    assert not resolves(name)


def test_names_are_read_from_backticks_only() -> None:
    text = "see `nanwatch.monitor.Monitor.log_step` and `Engine.ingest`, not nanwatch.protocol.dumps"
    assert dotted_names(text) == ["nanwatch.monitor.Monitor.log_step"]
