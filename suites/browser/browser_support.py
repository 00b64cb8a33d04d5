"""What the browser suite's tests and fixtures share: the browser's command line, the viewport
sizes, and a page that records its requests (see ``conftest.py``)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from qa.launcher import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
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
SCREENSHOTS = REPO_ROOT / "reports" / "browser"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The commonest laptop screen, where the docs site's reference tables must stay readable.
LAPTOP_HD = {"width": 1366, "height": 768}
# How long an expectation waits for the page (auto-waiting; no test sleeps).
EXPECT_TIMEOUT_MS = 20_000
SAMPLING_SECONDS = "0.5"


@dataclass
class BrowserPage:
    """A page in its own browser context, with every request it made and every error it logged."""

    page: Page
    requests: list[str] = field(default_factory=list)
    # Console errors and uncaught exceptions (a refused asset or a CSP violation shows here).
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


OpenPage = Callable[..., BrowserPage]


def assert_same_origin_and_clean(opened: BrowserPage, base_url: str) -> None:
    """Every request went to the backend's origin, and the page logged no error (a refused
    inline script or style is logged as one)."""
    assert opened.requests, "the page made no request"
    foreign = [url for url in opened.requests if not url.startswith(f"{base_url}/")]
    assert not foreign, f"requests to another origin: {foreign}"
    assert not opened.errors, opened.errors


class _QuietFiles(SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve the files under ``root`` over HTTP on a free loopback port, from a thread, for as
    long as the block runs; yields the base URL (no trailing slash)."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-files", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
