"""The pages in a real browser (headless chromium): what an engineer whose job was warned sees and does."""

from __future__ import annotations

import random

from tests.conftest import Service, wait_until
from tests.service.helpers import post_steps, reply
from tests.web.conftest import Browser
from tests.web.runs import NAN_AT, diverging_record, stream


def _points(browser: Browser, chart: str) -> int:
    return int(browser.page.get_attribute(f"#{chart} svg", "data-points"))


def test_the_run_page_of_a_diverging_run_shows_its_plots_the_finding_with_its_fix_and_the_halt(
    service: Service, browser: Browser
) -> None:
    stream(service.client, "resnet-lr3e-1", 400, diverging=True, team="vision", halt_on="critical")
    browser.open("/runs/resnet-lr3e-1")
    page = browser.page
    for chart in ("chart-loss", "chart-grad", "chart-layers", "chart-act", "chart-forecast"):
        assert _points(browser, chart) > 0, chart
    assert page.get_attribute("#chart-grad svg", "data-scale") == "log"  # 0.2 to 1e9: decades
    assert page.locator("#chart-loss .mark-nan").count() >= 1  # the NaN is a mark, not a gap
    assert page.locator("#chart-layers .mark-inf").count() >= 1
    assert page.locator("#chart-loss .finding").count() >= 1
    nonfinite = page.locator("#findings tr[data-detector='nonfinite']")
    assert nonfinite.locator("td.num").inner_text().startswith(str(NAN_AT))  # the episode's first step
    assert "non-finite activations" in nonfinite.locator("td.message-cell").inner_text()
    assert "lower the learning rate" in nonfinite.locator("td.remedy").inner_text()
    halt = page.locator("#halt-state").inner_text()
    assert halt.startswith("Halted at step ") and "by detector" in halt and "Fix:" in halt
    assert page.locator("#halt-button").is_disabled()
    assert page.locator("#status").inner_text() == "halted" and page.locator("#health").inner_text() == "critical"
    browser.screenshot("run-page.png")
    assert not browser.foreign and not browser.errors
    assert any("/v1/runs/resnet-lr3e-1/series?" in url for url in browser.requests)


def test_the_halt_button_halts_a_running_job(service: Service, browser: Browser) -> None:
    stream(service.client, "bert-base", 60, diverging=False, team="nlp")
    browser.open("/runs/bert-base")
    page = browser.page
    reason = "loss looks off, stopping to check the data"
    page.fill("#halt-reason", reason)
    page.click("#halt-button")
    page.wait_for_selector("#halt-state.requested")
    commands = reply(post_steps(service.client, "bert-base", []))["commands"]  # the job's next ingest reply
    assert [(c["source"], c["reason"]) for c in commands] == [("operator", reason)]
    reply(post_steps(service.client, "bert-base", [], acks=[{"id": commands[0]["id"], "step": 59}]))
    assert service.client.get("/v1/runs/bert-base").json()["status"] == "halted"
    browser.open("/runs/bert-base")
    page.wait_for_selector("#halt-state.halted")
    assert page.locator("#halt-state").inner_text().startswith("Halted at step 59 by operator: loss looks off")
    assert not browser.foreign and not browser.errors


def test_the_run_page_follows_a_streaming_run_reading_only_the_new_steps(service: Service, browser: Browser) -> None:
    stream(service.client, "live", 300, diverging=False, halt_on="never")
    browser.open("/runs/live")
    page = browser.page
    assert "299" in page.locator("#summary").inner_text()  # the last step
    rng = random.Random("live-tail")
    reply(post_steps(service.client, "live", [diverging_record(s, rng) for s in range(300, 320)]))
    wait_until(lambda: page.locator("#chart-loss .mark-nan").count() >= 1, timeout=30, what="the new NaN drawn")
    assert "319" in page.locator("#summary").inner_text()
    assert page.locator("#findings tr[data-detector='nonfinite']").count() == 1
    tails = [url for url in browser.requests if "/series?" in url and "start=300" in url]
    assert tails, "the page should ask for the steps since its last read, not the whole history"
    assert not browser.foreign and not browser.errors


def test_the_runs_page_lists_filters_and_links_every_run(service: Service, browser: Browser) -> None:
    stream(service.client, "resnet-lr3e-1", 400, diverging=True, team="vision", halt_on="critical")
    stream(service.client, "bert-base", 40, diverging=False, team="nlp")
    stream(service.client, "mlp-small", 20, diverging=False, team="vision")
    browser.open("/")
    page = browser.page
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 3 and rows.first.get_attribute("data-run-id") == "mlp-small"  # newest activity first
    browser.screenshot("runs-page.png")
    page.select_option("select[name=health]", "critical")
    wait_until(lambda: rows.count() == 1, what="the health filter")
    assert rows.first.get_attribute("data-run-id") == "resnet-lr3e-1" and "health=critical" in page.url
    page.select_option("select[name=health]", "")
    page.fill("input[name=team]", "nlp")
    page.press("input[name=team]", "Enter")
    wait_until(lambda: rows.count() == 1 and rows.first.get_attribute("data-run-id") == "bert-base", what="team")
    page.click("text=bert-base")
    page.wait_for_selector("body[data-run-id='bert-base'][data-ready='1']")
    assert not browser.foreign and not browser.errors


def test_an_unknown_run_gets_a_404_page_in_the_browser(service: Service, browser: Browser) -> None:
    response = browser.page.goto(f"{browser.base}/runs/no-such-run")
    assert response.status == 404
    assert "No run named “no-such-run”" in browser.page.locator("#message").inner_text()
    response = browser.page.goto(f"{browser.base}/runs/%3Cb%3Eodd%3C%2Fb%3E")
    assert response.status == 404 and "is not a run id" in browser.page.locator("#message").inner_text()
    assert not browser.foreign
