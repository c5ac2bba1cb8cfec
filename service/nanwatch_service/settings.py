"""Service settings, read from ``NANWATCH_*`` environment variables (passed in, so tests use a dict)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Each field reads ``NANWATCH_<FIELD>`` in :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "nanwatch.db"
    """SQLite file (WAL mode); used when ``database_url`` is not set."""
    database_url: str | None = None
    """``postgresql://...`` to share state between replicas."""
    token: str | None = None
    """When set, writes (register, ingest, halt, webhook) need ``Authorization: Bearer <token>``."""
    webhook_token: str | None = None
    """When set, the Alertmanager webhook also takes this token, which opens nothing else; the webhook then
    needs a token even when ``token`` is unset. Alertmanager reads it from a credentials file."""
    max_body_bytes: int = 16 * 1024 * 1024
    stale_after_s: float = 300.0
    """A running run silent for this long reads as ``stale`` and stops being exported to Prometheus."""
    horizon: int = 10
    """A forecast of at most this many steps to a non-finite value is critical."""
    window: int = 128
    """Steps of history a detector keeps (and a replica reloads from the store)."""
    redelivery_s: float = 30.0
    """A delivered command not acknowledged after this long is delivered again."""
    command_poll_s: float = 1.0
    """On PostgreSQL, how often a replica looks for halts that another replica issued to its runs."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``NANWATCH_*`` variables from ``environ`` (default ``os.environ``); ``overrides`` win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(f"NANWATCH_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _convert(field.name, raw, cls.__dataclass_fields__[field.name].default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _convert(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"NANWATCH_{name.upper()}={raw!r} is not a {type(default).__name__}") from None
    return raw
