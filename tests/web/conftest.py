"""A real browser for the page tests: Debian's chromium, headless, driven by Playwright (``chromium.py``).

Every request the pages make is recorded, and any that would leave the service's host is refused and
reported to the test. Screenshots go to ``artifacts/screenshots/`` (``NANWATCH_SCREENSHOTS``), which CI keeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, Service
from tests.web.chromium import launch

SCREENSHOTS = Path(os.environ.get("NANWATCH_SCREENSHOTS", REPO / "artifacts" / "screenshots"))


@dataclass
class Browser:
    """A page in a fresh chromium profile, with every request it made and every one refused."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> Any:
        """Load a page of the service and wait until its script has drawn it (``body[data-ready]``)."""
        response = self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        return response

    def screenshot(self, name: str) -> Path:
        """A full-page PNG under SCREENSHOTS."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser(service: Service, tmp_path: Path) -> Iterator[Browser]:
    """Chromium on a fresh profile, pointed at ``service``; closed after the test."""
    from playwright.sync_api import sync_playwright

    host = urlsplit(service.url).netloc
    with sync_playwright() as playwright:
        context = launch(playwright, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            browser = Browser(page, service.url)
            context.route("**/*", lambda route: _only(route, host, browser))
            page.on("pageerror", lambda error: browser.errors.append(str(error)))
            yield browser
        finally:
            context.close()


def _only(route: Any, host: str, browser: Browser) -> None:
    url = route.request.url
    browser.requests.append(url)
    if urlsplit(url).netloc == host or url.startswith(("data:", "about:")):
        route.continue_()
    else:
        browser.foreign.append(url)
        route.abort()
