"""The client stays light and the service never loads TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("heavy", ["fastapi", "starlette", "tensorflow", "keras", "uvicorn", "prometheus_client"])
def test_import_nanwatch_loads_neither_the_web_stack_nor_tensorflow(heavy: str) -> None:
    assert heavy not in _modules_after("import nanwatch")


@pytest.mark.parametrize("heavy", ["tensorflow", "keras"])
def test_import_nanwatch_service_loads_no_tensorflow(heavy: str) -> None:
    loaded = _modules_after("import nanwatch_service, nanwatch_service.app, nanwatch_service.cli")
    assert "fastapi" in loaded and heavy not in loaded
