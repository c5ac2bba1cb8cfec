"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from nanwatch_service.api.deps import EngineDep
from nanwatch_service.store import StoreError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(engine: EngineDep) -> dict[str, str]:
    """The store answers; 503 otherwise."""
    try:
        await run_in_threadpool(engine.store.ping)
    except StoreError as exc:
        raise HTTPException(503, detail=f"store unavailable: {exc}") from None
    return {"status": "ready"}
