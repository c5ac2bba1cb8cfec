"""How errors answer: every 4xx body is FastAPI's shape, ``{"detail": [{"loc", "msg", "type", ...}]}`` for
bad input (so it matches the schema the API documents) and ``{"detail": "..."}`` otherwise; a limit names
its setting; a 405 lists every method of the path. Nothing here echoes a request header."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from nanwatch import protocol
from nanwatch_service.engine import TeamFull, UnknownRun
from nanwatch_service.settings import Settings
from nanwatch_service.store import StoreError


class LimitExceeded(Exception):
    """A request is larger than a configured limit; ``setting`` is the variable that raises it."""

    def __init__(self, status: int, field: str, message: str, setting: str, limit: int) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.setting, self.limit = status, field, message, setting, limit

    @classmethod
    def from_protocol(cls, exc: protocol.ProtocolError, settings: Settings) -> LimitExceeded:
        """The limit a decoder reported (``exc.limit`` set), with its setting and value."""
        assert exc.limit is not None
        status = 413 if exc.limit == "records" else 422
        value = getattr(settings.limits, exc.limit)
        return cls(status, exc.field, exc.message, Settings.variable(exc.limit), value)


def detail(field: str, message: str, kind: str = "value_error", where: str = "body", **extra: Any) -> list[Any]:
    """FastAPI's validation-error list for one field: ``loc``, ``msg``, ``type``, and ``field`` spelled out."""
    loc = [where, *([field] if field else [])]
    return [{"loc": loc, "field": field, "msg": message, "type": kind, **extra}]


def install(app: FastAPI) -> None:
    """Add the exception handlers."""
    app.add_exception_handler(protocol.ProtocolError, _bad_message)
    app.add_exception_handler(LimitExceeded, _over_limit)
    app.add_exception_handler(TeamFull, _team_full)
    app.add_exception_handler(UnknownRun, _unknown_run)
    app.add_exception_handler(StoreError, _store_down)
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def _bad_message(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, protocol.ProtocolError)
    if exc.limit is not None:
        return await _over_limit(request, LimitExceeded.from_protocol(exc, request.app.state.settings))
    status = 415 if exc.field == "content-type" else 422
    return JSONResponse({"detail": detail(exc.field, exc.message)}, status_code=status)


async def _over_limit(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LimitExceeded)
    message = f"{exc.message} (the limit {exc.setting} sets)"
    body = {"detail": detail(exc.field, message, "limit_exceeded", setting=exc.setting, limit=exc.limit)}
    return JSONResponse(body, status_code=exc.status)


async def _team_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TeamFull)
    full = LimitExceeded(422, "team", str(exc), "NANWATCH_MAX_RUNS_PER_TEAM", exc.limit)
    return await _over_limit(request, full)


async def _unknown_run(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _store_down(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"store unavailable, retry later: {exc}"}, status_code=503)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_methods_of(request))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _methods_of(request: Request) -> list[str]:
    """Every method some route serves at this request's path (a route answers a 405 with its own only)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
