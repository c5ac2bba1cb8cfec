"""The pages as plain HTTP: shells, static files, and a 404 page (never a traceback) for bad URLs."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from tests.conftest import Service
from tests.service.helpers import register

HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_the_pages_are_html_shells_that_name_their_scripts(service: Service) -> None:
    register(service.client, "resnet-1")
    runs = service.client.get("/", headers=HTML)
    assert runs.status_code == 200 and runs.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/runs.js">' in runs.text
    run = service.client.get("/runs/resnet-1", headers=HTML)
    assert run.status_code == 200 and 'data-run-id="resnet-1"' in run.text
    assert "default-src 'self'" in run.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/runs/nobody", "No run named “nobody”"),
        ("/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "is not a run id"),
        ("/runs/a%20b", "is not a run id"),
        ("/runs/..%2F..%2Fetc%2Fpasswd", "is not a run id"),
        ("/runs/run/../../x", "not"),
        ("/runs/" + "x" * 129, "is not a run id"),
        ("/runs/%F0%9F%94%A5", "is not a run id"),
        ("/runs/", "is not a run id"),
        ("/nowhere", "There is no page at /nowhere"),
    ],
)
def test_a_bad_url_gets_a_404_page_that_says_what_was_not_found(service: Service, path: str, says: str) -> None:
    response = service.client.get(path, headers=HTML)
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    assert "404 · not found" in response.text and says in response.text
    assert "<script>" not in response.text and "Traceback" not in response.text
    assert '<a href="/">See every run</a>' in response.text


def test_the_api_keeps_answering_json_404s(service: Service) -> None:
    for path in ("/v1/runs/nobody", "/v1/nothing"):
        response = service.client.get(path, headers=HTML)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    assert service.client.get("/nowhere").json() == {"detail": "Not Found"}  # not a browser: JSON as before


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("run.js", "text/javascript"), ("chart.js", "text/javascript"), ("nanwatch.css", "text/css")],
)
def test_static_files_are_served_from_the_package(service: Service, name: str, media_type: str) -> None:
    response = service.client.get(f"/static/{name}")
    assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)


@pytest.mark.parametrize("name", ["missing.js", "..%2Fpages.py", "pages.py", "%2e%2e"])
def test_anything_else_under_static_is_not_found(service: Service, name: str) -> None:
    assert service.client.get(f"/static/{name}").status_code == 404


def test_nothing_in_the_pages_loads_from_another_host() -> None:
    web = resources.files("nanwatch_service.web")
    files = [*(web / "static").iterdir(), *(web / "templates").iterdir()]
    assert {f.name for f in files} >= {"run.js", "runs.js", "api.js", "chart.js", "run.html", "runs.html"}
    for file in files:
        text = file.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+", text)) - {"http://www.w3.org"}  # the SVG namespace
        assert not urls, f"{file.name} refers to another host: {urls}"
