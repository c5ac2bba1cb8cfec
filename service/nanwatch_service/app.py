"""``create_app(settings)``: the FastAPI application. Nothing is built at import time; the store opens
in the lifespan, and every app has its own Prometheus registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.concurrency import run_in_threadpool

import nanwatch
from nanwatch_service.alerts import AlertLedger
from nanwatch_service.api import ROUTERS
from nanwatch_service.engine import Engine, UnknownRun
from nanwatch_service.metrics import ServiceMetrics
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, StoreError, open_store
from nanwatch_service.web import install as install_pages


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """Build the service. ``store`` overrides the one the settings name (tests pass their own)."""
    settings = Settings.from_env() if settings is None else settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = store if store is not None else await run_in_threadpool(open_store, settings)
        engine = Engine(opened, settings)
        app.state.metrics.attach(engine)
        app.state.engine = engine
        engine.start()
        watching = asyncio.create_task(engine.watch_commands(), name="nanwatch-commands")
        try:
            yield
        finally:
            watching.cancel()
            await run_in_threadpool(engine.close)
            if store is None:
                opened.close()

    app = FastAPI(
        title="nanwatch",
        version=nanwatch.__version__,
        summary="Catch the precursors of NaN in training jobs, name the layer and the fix, and halt in time.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics(CollectorRegistry())
    app.state.alert_ledger = AlertLedger()
    for router in ROUTERS:
        app.include_router(router)
    _add_handlers(app)
    install_pages(app)
    return app


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownRun)
    async def unknown_run(request: Request, exc: UnknownRun) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StoreError)
    async def store_down(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"store unavailable, retry later: {exc}"}, status_code=503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus exposition of run-level and service metrics."""
        body = await run_in_threadpool(app.state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
