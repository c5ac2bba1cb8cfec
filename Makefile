# The two set-up commands: `make serve` (the service on SQLite, nothing else needed) and `make test`.
# Each creates or reuses the virtual environment it needs in .venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export NANWATCH_TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: serve test lint bench tools

$(VENV)/.stamp-service: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[service,postgres]'
	touch $@

$(VENV)/.stamp-all: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@ $(VENV)/.stamp-service

serve: $(VENV)/.stamp-service
	$(VENV)/bin/nanwatch serve

# promtool and amtool validate deploy/ in the tests, chromium runs the page tests headless (Debian
# packages; installed once when missing). Playwright drives that chromium: it never downloads a browser.
tools:
	@command -v promtool >/dev/null && command -v amtool >/dev/null && command -v chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager chromium >/dev/null)

test: $(VENV)/.stamp-all tools
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp-all
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check client service
	$(VENV)/bin/mypy

bench: $(VENV)/.stamp-all
	$(PY) bench/detector_throughput.py
	$(PY) bench/ingest.py
	$(PY) bench/client_overhead.py
	$(PY) bench/detection.py
	$(PY) bench/run_page.py
