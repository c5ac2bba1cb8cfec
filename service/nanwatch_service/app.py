"""``create_app(settings)``: the FastAPI application. Nothing is built at import time; the store opens
in the lifespan, and every app has its own Prometheus registry and its own book of tokens (read here, so
that a broken tokens file stops the service before it listens)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.concurrency import run_in_threadpool

import nanwatch
from nanwatch_service import retention
from nanwatch_service.alerts import AlertLedger
from nanwatch_service.api import ROUTERS, errors, openapi
from nanwatch_service.api.headers import SecurityHeaders
from nanwatch_service.auth import TokenBook, legacy_tokens
from nanwatch_service.engine import Engine
from nanwatch_service.metrics import ServiceMetrics
from nanwatch_service.settings import Settings
from nanwatch_service.store import Store, open_store
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
        tasks = [
            asyncio.create_task(engine.watch_commands(), name="nanwatch-commands"),
            asyncio.create_task(retention.keep_bounded(engine), name="nanwatch-retention"),
        ]
        try:
            with _reload_on_sighup(app.state.tokens):
                yield
        finally:
            for task in tasks:
                task.cancel()
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
    app.state.tokens = TokenBook(settings.tokens_file, legacy_tokens(settings.token, settings.webhook_token))
    app.state.metrics = ServiceMetrics(CollectorRegistry())
    app.state.alert_ledger = AlertLedger()
    for router in ROUTERS:
        app.include_router(router)
    _add_metrics(app)
    errors.install(app)
    openapi.install(app, settings.limits, app.state.tokens.required)
    app.add_middleware(SecurityHeaders)
    install_pages(app)
    return app


@contextlib.contextmanager
def _reload_on_sighup(tokens: TokenBook) -> Iterator[None]:
    """SIGHUP reads the tokens file again (only the main thread may take signals; a service in a thread of
    another program, as in the tests, leaves them alone)."""
    if tokens.path is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: tokens.request_reload())
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def _add_metrics(app: FastAPI) -> None:
    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus exposition of run-level and service metrics."""
        body = await run_in_threadpool(app.state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
