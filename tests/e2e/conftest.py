"""What the scenario tests share: one service per module, and the nanwatch logger's expected lines kept quiet."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanwatch_service.settings import Settings
from tests.conftest import ServiceThread


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service on SQLite, for the whole module (its scenario runs are cached per module)."""
    db: Path = tmp_path_factory.mktemp("scenarios") / "nanwatch.db"
    with ServiceThread(Settings(db=str(db))) as server:
        yield server.url


@contextlib.contextmanager
def expected_halts() -> Iterator[None]:
    """Within the block the nanwatch logger says only errors: its halt and recovery lines are expected."""
    logger = logging.getLogger("nanwatch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
