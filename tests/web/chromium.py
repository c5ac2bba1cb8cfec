"""Launching Debian's chromium through Playwright, for the page tests and ``bench/run_page.py``.

Playwright never downloads a browser here: it drives the system's ``/usr/bin/chromium`` (``make tools``
installs it; ``NANWATCH_CHROMIUM`` points elsewhere) on a fresh profile, with the switches that keep a
headless chromium running as root off the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("NANWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright: Any, profile: Path) -> Any:
    """A browser context on a fresh profile in ``profile`` (a folder that does not exist yet)."""
    if not shutil.which(CHROMIUM):
        raise RuntimeError(
            f"no chromium at {CHROMIUM}: apt-get install chromium (make tools), or set NANWATCH_CHROMIUM"
        )
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900},
        service_workers="block",
    )
