"""Store fixtures: each Store test runs on SQLite and on PostgreSQL (a fresh schema per test: ``pg_url``,
in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(Settings(db=str(tmp_path / "store.db")))
    else:
        opened = open_store(Settings(database_url=request.getfixturevalue("pg_url")))
    try:
        yield opened
    finally:
        opened.close()
