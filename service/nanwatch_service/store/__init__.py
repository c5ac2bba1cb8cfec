"""Stores: SQLite by default, PostgreSQL for several replicas; both behind :class:`Store`."""

from __future__ import annotations

from nanwatch_service.settings import Settings
from nanwatch_service.store.base import Store, StoreError


def open_store(settings: Settings) -> Store:
    """Open the store the settings name: ``database_url`` if set, else the SQLite file ``db``."""
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"database_url must start with postgresql://, got {settings.database_url!r}")
        from nanwatch_service.store.postgres import PostgresStore

        return PostgresStore(settings.database_url)
    from nanwatch_service.store.sqlite import SqliteStore

    return SqliteStore(settings.db)


__all__ = ["Store", "StoreError", "open_store"]
