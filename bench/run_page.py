"""How long the run page of a 100,000-step run takes to load, in headless chromium (issue 21: under 2 s).

A run of ``--steps`` records shaped as the Keras callback sends them (10 layers; light steps with gradient
norms and activation means/extremes, a detail step with all 12 statistics every 30th step; diverging to
NaN over its last 100 steps) is streamed to ``nanwatch serve`` (a child process, SQLite) as the callback
sends it: protocol 2, 1,000 records a request, detectors, events and all. Then, ``--repeat`` times,
interleaved:

- **page**: chromium opens ``/runs/{run_id}`` on a fresh tab; the time from navigation until the page
  has drawn its plots and findings, by the page's own clock (``body[data-ready-ms]``): HTML, scripts, the
  three API calls the page makes, and drawing;
- **series**: the page's own ``GET /v1/runs/{id}/series`` query alone (downsampled, with the forecast);
- **baseline**: what a page without the series endpoint would download to plot the same history:
  ``GET /v1/runs/{id}/steps?fields=loss,grad_norm,layers`` paged through all rows (10,000 a page);
- **read_series**: ``Store.read_series`` of those fields in this process (the store's share).

Prints the median of each and the ratio baseline/series. ``.venv/bin/python bench/run_page.py``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._service import running_service
from nanwatch import protocol
from nanwatch.protocol import LAYER_FIELDS
from nanwatch_service.detectors.history import FORECAST_FIELDS
from nanwatch_service.store.sqlite import SqliteStore
from tests.web.chromium import launch

RUN_ID = "bench-100k"
LAYERS = 10
LIGHT = ("grad_norm", "act_mean", "act_frac_nonfinite", "act_max_abs", "in_max_abs")
PAGE_FIELDS = "loss,grad_norm,layers.grad_norm,layers.act_max_abs,steps_to_nonfinite"


HEALTHY = {  # a Dense/ReLU layer's statistics in a healthy step (the output layer is a sigmoid)
    "grad_norm": 0.1,
    "grad_mean_abs": 1e-4,
    "weight_norm": 10.0,
    "update_norm": 0.01,
    "act_mean": 0.2,
    "act_std": 0.5,
    "act_max_abs": 3.0,
    "act_frac_zero": 0.5,
    "act_frac_nonfinite": 0.0,
    "act_frac_saturated": 0.0,
    "act_frac_zero_var": 0.0,
    "in_max_abs": 3.0,
}
GROWS = ("grad_norm", "grad_mean_abs", "update_norm", "act_max_abs", "in_max_abs")


def records(steps: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """Callback-shaped records: ±10 % noise, then ×3 a step over the last 100 steps, NaN in the last 5."""
    for step in range(steps):
        growth = 3.0 ** max(0, step - (steps - 100))
        noise = np.exp(rng.normal(0.0, 0.1, LAYERS))
        layers = {}
        for field in LAYER_FIELDS if step % 30 == 0 else LIGHT:
            scale = noise * growth if field in GROWS else noise
            layers[field] = (HEALTHY[field] * scale).tolist()
        record = {"step": step, "loss": 0.5 * float(noise[0]) * growth, "lr": 1e-3, "layers": layers}
        record["grad_norm"] = 0.3 * float(noise[1]) * growth
        if step >= steps - 5:
            record.update(loss=float("nan"), grad_norm=float("nan"))
        yield record


def build(client: httpx.Client, steps: int) -> float:
    """Register the run and stream it to the service as the callback does (protocol 2, 1,000 records a
    request); seconds it took."""
    began = time.perf_counter()
    layers = [{"name": f"dense_{i}", "kind": "Dense", "activation": "relu", "params": 1000} for i in range(LAYERS)]
    layers[-1]["activation"] = "sigmoid"
    spec = {"name": RUN_ID, "team": "bench", "halt_on": "never", "layers": layers}
    client.put(f"/v1/runs/{RUN_ID}", json=spec).raise_for_status()
    stream = records(steps, np.random.default_rng(0))
    while batch := list(itertools.islice(stream, 1000)):
        body, content_type = protocol.encode_batch(batch, attempt="a", n_layers=LAYERS)
        reply = client.post(f"/v1/runs/{RUN_ID}/steps", content=body, headers={"Content-Type": content_type})
        reply.raise_for_status()
    return time.perf_counter() - began


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def baseline(client: httpx.Client) -> int:
    """Every row through the history endpoint; bytes downloaded."""
    size, after = 0, 0
    while True:
        params = {"fields": "loss,grad_norm,layers", "limit": 10_000, "after_seq": after}
        page = client.get(f"/v1/runs/{RUN_ID}/steps", params=params)
        page.raise_for_status()
        size += len(page.content)
        after = page.json()["next_after_seq"]
        if after is None:
            return size


def series(client: httpx.Client, points: int) -> int:
    """The page's series query; bytes downloaded."""
    reply = client.get(f"/v1/runs/{RUN_ID}/series", params={"fields": PAGE_FIELDS, "points": points, "top": 5})
    reply.raise_for_status()
    return len(reply.content)


def open_page(context: Any, url: str) -> tuple[float, int]:
    """Load the run page on a fresh tab until drawn: the page's own clock from navigation to the end of
    its first drawing (Playwright's waits poll at up to 0.5 s), and the number of loss points drawn."""
    page = context.new_page()
    try:
        page.goto(f"{url}/runs/{RUN_ID}")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        drawn_ms = int(page.get_attribute("body", "data-ready-ms"))
        return drawn_ms / 1000, int(page.get_attribute("#chart-loss svg", "data-points"))
    finally:
        page.close()


def read_series(db: Path) -> int:
    store = SqliteStore(db)
    try:
        steps, _ = store.read_series(
            RUN_ID, list(dict.fromkeys(PAGE_FIELDS.split(",")[:-1] + list(FORECAST_FIELDS))), start=None, end=None
        )
        return len(steps)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--points", type=int, default=334, help="what the page asks for in a 1400 px window")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        times: dict[str, list[float]] = {"page": [], "series": [], "baseline": [], "read_series": []}
        sizes: dict[str, int] = {}
        with running_service(db=db) as url, httpx.Client(base_url=url, timeout=120) as client, sync_playwright() as pw:
            print(f"streamed {args.steps:,} steps to the service in {build(client, args.steps):.1f} s")
            context = launch(pw, Path(tmp) / "profile")
            try:
                open_page(context, url)  # warm: the service's first request, chromium's first tab
                for _ in range(args.repeat):
                    for name, action in (
                        ("baseline", lambda: baseline(client)),
                        ("series", lambda: series(client, args.points)),
                        ("read_series", lambda: read_series(db)),
                    ):
                        seconds, sizes[name] = timed(action)
                        times[name].append(seconds)
                    seconds, sizes["page"] = open_page(context, url)
                    times["page"].append(seconds)
            finally:
                context.close()
    report(times, sizes, args)


def report(times: dict[str, list[float]], sizes: dict[str, int], args: argparse.Namespace) -> None:
    median = {name: statistics.median(values) for name, values in times.items()}
    notes = {
        "page": f"{sizes['page']} loss points drawn",
        "series": f"{sizes['series'] / 1e3:,.0f} kB",
        "baseline": f"{sizes['baseline'] / 1e6:,.1f} MB",
        "read_series": f"{sizes['read_series']:,} rows",
    }
    labels = {
        "page": "page load (navigation to drawn)",
        "series": "series endpoint (the page's query)",
        "baseline": "baseline: /steps, every row",
        "read_series": "Store.read_series in process",
    }
    print(f"{args.steps:,} steps, {args.repeat} repetitions, median [every run] in s:")
    for name, label in labels.items():
        print(f"  {label:36} {median[name]:6.3f}  {fmt(times[name])}  {notes[name]}")
    print(f"  baseline / series: {median['baseline'] / median['series']:.1f}x")


def fmt(values: list[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
