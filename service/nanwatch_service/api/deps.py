"""Dependencies shared by the routers: the engine, settings, auth and the run-id path parameter."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from nanwatch.protocol import RUN_ID_PATTERN
from nanwatch_service.engine import Engine
from nanwatch_service.settings import Settings


def get_engine(request: Request) -> Engine:
    """The app's engine, built in the lifespan."""
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def require_writer(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """With a token configured, writes need ``Authorization: Bearer <token>``."""
    if settings.token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
        raise HTTPException(401, detail="missing or wrong bearer token (NANWATCH_TOKEN)")


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Writer = Depends(require_writer)
RunId = Annotated[
    str,
    Path(pattern=f"^{RUN_ID_PATTERN.pattern}$", description="[A-Za-z0-9._-]{1,128}", examples=["resnet-lr3e-4"]),
]
