"""Service settings, read from ``NANWATCH_*`` environment variables (passed in, so tests use a dict)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nanwatch import protocol


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Each field reads ``NANWATCH_<FIELD>`` in :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "nanwatch.db"
    """SQLite file (WAL mode); used when ``database_url`` is not set."""
    database_url: str | None = None
    """``postgresql://...`` to share state between replicas."""
    tokens_file: str | None = None
    """The tokens file (TOML ``[[tokens]]``: name, team, role, sha256; see ``nanwatch_service.auth``). With it,
    every call but ``/healthz``, ``/readyz``, ``/metrics`` and the API description needs a token."""
    token: str | None = None
    """Legacy: one admin token of every team (named ``NANWATCH_TOKEN``); with it every call needs a token."""
    webhook_token: str | None = None
    """Legacy: one operator token of every team (named ``NANWATCH_WEBHOOK_TOKEN``), what Alertmanager sends;
    put it in the tokens file instead (``nanwatch tokens add --team '*' --role operator``)."""
    allow_anonymous: bool = False
    """Serve a non-loopback address with no token configured (anyone who reaches it may read, write,
    halt and delete every run)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body (413)."""
    max_records: int = protocol.MAX_RECORDS
    """Most step records in one request (413)."""
    max_layers: int = protocol.MAX_LAYERS
    """Most layers in a run's layer table (422)."""
    max_name_chars: int = protocol.MAX_NAME_CHARS
    """Longest name in a registration: run name, team, framework, a layer's name, kind, activation, a meta
    key; and an alert's label value (422)."""
    max_text_chars: int = protocol.MAX_TEXT_CHARS
    """Longest free text: a meta value, a halt's reason, an alert's annotation (422)."""
    max_runs_per_team: int = 10_000
    """Most runs a team may hold (runs without a team count as one team); a new one beyond is refused (422)."""
    retain_steps: int = 100_000
    """Step records of a run kept in full, the newest; older ones are downsampled."""
    retain_every: int = 100
    """Of the older records, one is kept per this many steps (per attempt)."""
    retain_around_events: int = 50
    """Steps kept in full on each side of an event's steps (where it started, worsened, was last seen, ended)."""
    retain_runs_s: float = 90 * 86400.0
    """A run not seen for this long (finished, halted or gone silent) is deleted with its history. 0 keeps it."""
    retention_interval_s: float = 300.0
    """How often a replica applies the retention rules (0: never)."""
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

    def __post_init__(self) -> None:
        caps = {"max_records": protocol.MAX_RECORDS, "max_layers": protocol.MAX_LAYERS}
        caps |= {"max_name_chars": protocol.MAX_NAME_CHARS, "max_text_chars": protocol.MAX_TEXT_CHARS}
        for name, cap in caps.items():
            if not 1 <= getattr(self, name) <= cap:
                raise ValueError(f"NANWATCH_{name.upper()} must be in 1..{cap} (the protocol's own limit)")
        if self.retain_every < 1:
            raise ValueError("NANWATCH_RETAIN_EVERY must be >= 1 (1 keeps every record)")

    @property
    def limits(self) -> protocol.Limits:
        """The message limits these settings set, for ``nanwatch.protocol``'s decoders."""
        return protocol.Limits(self.max_records, self.max_layers, self.max_name_chars, self.max_text_chars)

    @staticmethod
    def variable(limit: str) -> str:
        """The environment variable that sets a :class:`~nanwatch.protocol.Limits` field."""
        return f"NANWATCH_MAX_{limit.upper()}"

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
