"""Dependencies shared by the routers: the engine, settings, the caller and the run-id path parameter (or the
run's in-memory state, for ingest).

Who calls is resolved once per request, by :func:`get_caller` (FastAPI caches a dependency within a
request). A route states the role it needs and, when it takes a run id, asks for a visible one::

    @router.get("/v1/runs/{run_id}/series", dependencies=[ReaderRole])
    async def series(run_id: VisibleRunId, caller: CallerDep, ...): ...

The role is checked first (403 says nothing about the run), then the run: a run of another team is the
same 404 as a missing one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Path, Request

from nanwatch.protocol import RUN_ID_PATTERN
from nanwatch_service.auth import ANONYMOUS, Caller, Role, TokenBook
from nanwatch_service.engine import Engine, UnknownRun
from nanwatch_service.run_state import RunState
from nanwatch_service.settings import Settings


async def get_engine(request: Request) -> Engine:
    """The app's engine, built in the lifespan. Every dependency here is ``async def``, though none
    awaits: FastAPI runs a plain ``def`` one in the thread pool, a hand-off per request on the ingest path."""
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_caller(request: Request) -> Caller:
    """The request's caller: its bearer token's name, team and role (401 without a known token, whenever
    tokens are configured); :data:`~nanwatch_service.auth.ANONYMOUS` when none is. Async, as the checks
    below: a lookup is a hash and a ``stat``, not worth a hop to the thread pool on the ingest path."""
    book: TokenBook = request.app.state.tokens
    if not book.required:
        return ANONYMOUS
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    caller = book.resolve(presented.strip()) if scheme.lower() == "bearer" and presented.strip() else None
    if caller is None:
        raise HTTPException(
            401,
            detail="missing or unknown bearer token: send 'Authorization: Bearer <token>' with a token of the "
            "service's tokens file (nanwatch tokens add)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def requires(role: Role) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency that lets only callers with at least ``role`` through (403 for the others)."""

    async def check(caller: CallerDep) -> Caller:
        if caller.role < role:
            raise HTTPException(403, detail=f"token {caller.name!r} is a {caller.role.label}; this needs {role.label}")
        return caller

    check.__name__ = f"requires_{role.label}"
    return check


ReaderRole = Depends(requires(Role.READER))
WriterRole = Depends(requires(Role.WRITER))
OperatorRole = Depends(requires(Role.OPERATOR))
AdminRole = Depends(requires(Role.ADMIN))

EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RunId = Annotated[
    str,
    Path(pattern=f"^{RUN_ID_PATTERN.pattern}$", description="[A-Za-z0-9._-]{1,128}", examples=["resnet-lr3e-4"]),
]


async def visible_run_id(run_id: RunId, caller: CallerDep, engine: EngineDep) -> str:
    """The path's run id, once the run exists and the caller may see it; a run of another team raises the
    same :class:`UnknownRun` (404) as a missing one."""
    ensure_visible(caller, run_id, await engine.team_of(run_id))
    return run_id


def ensure_visible(caller: Caller, run_id: str, team: str | None) -> None:
    """Raise the missing run's 404 when a run owned by ``team`` is not the caller's to see."""
    if not caller.can_see(team):
        raise UnknownRun(run_id)


VisibleRunId = Annotated[str, Depends(visible_run_id)]


async def visible_run(run_id: RunId, caller: CallerDep, engine: EngineDep) -> RunState:
    """The in-memory state of the path's run, once the run exists and the caller may see it (the same 404
    as :func:`visible_run_id`): what the ingest route hands the engine, so that the run is looked up once."""
    return await engine.visible_state(run_id, caller)


VisibleRun = Annotated[RunState, Depends(visible_run)]


def words_of(vocabulary: type[Enum]) -> Any:
    """The type of a query parameter that takes the words of ``vocabulary`` (a string enum) as plain
    strings, ``Literal[...]`` of them: the OpenAPI document lists them inline and a bad value is a 422 of
    type ``literal_error``, as an enum class would not have it. Use it behind ``TYPE_CHECKING``, where the
    enum itself is the type."""
    return Literal[tuple(str(word) for word in vocabulary)]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "tokens are configured and the request has no known bearer token"},
    403: {"description": "the token's role does not allow this"},
    404: {"description": "no such run, or a run of another team"},
    503: {"description": "the store is unavailable; retry later"},
}
"""The error answers every run route may give (documented in the OpenAPI schema)."""

BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"description": "the body or its records exceed a limit; the reply names the setting"},
    415: {"description": "the body is neither application/json nor application/msgpack"},
}
"""What a route that reads a body may answer besides."""
