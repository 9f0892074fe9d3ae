"""Headless Chromium for the browser tests: Debian's `chromium` package driven by Playwright (never
`playwright install`: no browser download is reachable from CI)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tests.harness import ROOT

CHROMIUM = os.environ.get("PENGUINS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots (gitignored)
TIMEOUT_MS = 30_000


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is a dev dependency: uv sync"
    return None


@contextlib.contextmanager
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
