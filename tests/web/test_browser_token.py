"""The pages on a service that asks for a token: they say so, and send it once given with ``?token=``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Service, ServiceThread
from tests.web.conftest import Browser
from tests.web.runs import stream

TOKEN = "s3cret-token"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """The service with ``NANWATCH_TOKEN`` set; its client sends the token (the job's writes need it)."""
    from nanwatch_service.settings import Settings

    db = tmp_path / "nanwatch.db"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        ServiceThread(Settings(db=str(db), token=TOKEN)) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=headers) as client,
    ):
        yield Service(server.url, client, db)


def test_without_the_token_the_halt_is_refused_with_a_message_that_says_how_to_give_it(
    service: Service, browser: Browser
) -> None:
    stream(service.client, "guarded", 30, diverging=False)
    browser.open("/runs/guarded")
    browser.page.click("#halt-button")
    browser.page.wait_for_selector("#halt-error:not([hidden])")
    assert "open this page with ?token=" in browser.page.locator("#halt-error").inner_text()
    assert service.client.get("/v1/runs/guarded").json()["status"] == "running"
    assert browser.page.locator("#halt-button").is_enabled()  # it can be tried again


def test_a_token_given_once_in_the_url_is_kept_out_of_it_and_sent_with_every_call(
    service: Service, browser: Browser
) -> None:
    stream(service.client, "guarded", 30, diverging=False)
    browser.open(f"/runs/guarded?token={TOKEN}")
    assert "token" not in browser.page.url  # not left in the history or in a copied link
    browser.open("/runs/guarded")  # a later visit: the token comes from the browser's storage
    with browser.page.expect_request(lambda r: r.url.endswith("/halt")) as halt:
        browser.page.click("#halt-button")
    assert halt.value.headers["authorization"] == f"Bearer {TOKEN}"
    browser.page.wait_for_selector("#halt-state.requested")
    assert not browser.foreign


def test_the_runs_page_keeps_a_token_given_in_the_url_with_its_filters(service: Service, browser: Browser) -> None:
    stream(service.client, "guarded", 5, diverging=False)
    with browser.page.expect_request(lambda r: "/v1/runs?" in r.url) as listing:
        browser.open(f"/?team=vision&token={TOKEN}")
    assert listing.value.headers["authorization"] == f"Bearer {TOKEN}"
    assert browser.page.url.endswith("/?team=vision")
