"""Routes of the web pages and their static files, and the HTML page a browser gets for a 404."""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from typing import Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

import nanwatch
from nanwatch.protocol import RUN_ID_PATTERN
from nanwatch_service.api.deps import EngineDep

PACKAGE: Final = resources.files("nanwatch_service.web")
MEDIA_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
CACHE: Final = {"Cache-Control": "no-cache"}  # revalidate: a new release must not meet an old script
SECURITY: Final = {
    # the pages load nothing from another host, and say so to the browser
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def runs_page() -> HTMLResponse:
    """Every run: status, health, last step, forecast, team, last seen; filters; refreshes itself."""
    return _page("runs.html", title="runs")


@router.get("/runs/{run_id:path}", response_class=HTMLResponse)
async def run_page(run_id: str, request: Request, engine: EngineDep) -> HTMLResponse:
    """One run: plots over steps, findings with their fix, the halt and a Halt button.

    With tokens configured, a page load carries none (a browser's navigation sends no bearer token), so
    the page is the same shell for every well-formed run id and its API calls, which carry the token,
    tell the caller whether the run exists for them: the page says nothing about other teams' runs."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        return not_found(f"“{run_id}” is not a run id: run ids are 1 to 128 letters, digits, '.', '_' or '-'.")
    open_to_all = not request.app.state.tokens.required
    if open_to_all and await run_in_threadpool(engine.store.get_run, run_id) is None:
        return not_found(f"No run named “{run_id}” is registered here.")
    return _page("run.html", title=run_id, run_id=run_id)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    """A file of the pages (scripts, styles), from this package."""
    resource = PACKAGE / "static" / name
    suffix = name[name.rfind(".") :]
    if suffix not in MEDIA_TYPES or "/" in name or not resource.is_file():
        raise HTTPException(404, detail=f"no static file {name!r}")
    return Response(resource.read_bytes(), media_type=MEDIA_TYPES[suffix], headers={**CACHE, **SECURITY})


def not_found(message: str) -> HTMLResponse:
    """The 404 page: what was not found, and the way back to the runs."""
    return _page("not_found.html", status_code=404, title="not found", message=message)


def install(app: FastAPI) -> None:
    """Serve the pages, and answer a browser's 404 outside the API with a page instead of JSON."""
    app.include_router(router)

    async def page_or_json(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        wants_page = "text/html" in request.headers.get("accept", "")
        if wants_page and not request.url.path.startswith("/v1/"):
            return not_found(f"There is no page at {request.url.path}.")
        return await http_exception_handler(request, exc)

    app.add_exception_handler(404, page_or_json)


def _page(template: str, *, status_code: int = 200, **fields: str) -> HTMLResponse:
    values = {name: html.escape(value) for name, value in fields.items()}
    head = _template("head.html").substitute(values)
    body = _template(template).substitute(values, head=head, version=nanwatch.__version__)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY)


def _template(name: str) -> Template:
    return Template((PACKAGE / "templates" / name).read_text(encoding="utf-8"))
