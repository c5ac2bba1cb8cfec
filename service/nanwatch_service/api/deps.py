"""Dependencies shared by the routers: the engine, settings, auth and the run-id path parameter.

Each is ``async def``, though none awaits: FastAPI runs a plain ``def`` dependency in the thread pool,
which would cost every request a thread hand-off per dependency.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from nanwatch.protocol import RUN_ID_PATTERN
from nanwatch_service.engine import Engine
from nanwatch_service.settings import Settings


async def get_engine(request: Request) -> Engine:
    """The app's engine, built in the lifespan."""
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def require_writer(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """With a token configured, writes need ``Authorization: Bearer <token>``."""
    if settings.token is not None and not _bearer_is_one_of(request, [settings.token]):
        raise HTTPException(401, detail="missing or wrong bearer token (NANWATCH_TOKEN)")


async def require_webhook_caller(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """The Alertmanager webhook takes its own token (``NANWATCH_WEBHOOK_TOKEN``, which opens nothing else)
    or the writers' one; with neither configured it is open, like every write."""
    tokens = [token for token in (settings.webhook_token, settings.token) if token is not None]
    if tokens and not _bearer_is_one_of(request, tokens):
        raise HTTPException(
            401,
            detail="missing or wrong bearer token: the webhook takes NANWATCH_WEBHOOK_TOKEN (Alertmanager's "
            "http_config.authorization.credentials_file) or NANWATCH_TOKEN",
        )


def _bearer_is_one_of(request: Request, tokens: list[str]) -> bool:
    given = request.headers.get("authorization", "").encode()
    matches = [hmac.compare_digest(given, f"Bearer {token}".encode()) for token in tokens]  # no early exit
    return any(matches)


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Writer = Depends(require_writer)
WebhookCaller = Depends(require_webhook_caller)
RunId = Annotated[
    str,
    Path(pattern=f"^{RUN_ID_PATTERN.pattern}$", description="[A-Za-z0-9._-]{1,128}", examples=["resnet-lr3e-4"]),
]
