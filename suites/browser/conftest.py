"""Fixtures of the browser suite: Debian's chromium driven headless by Playwright's Python
package (never `playwright install`: the browser is the system's), against a backend
launched with a short sampling interval so live updates arrive quickly.

Every page records the requests it makes (``BrowserPage.requests``), so a test can check that
the page loaded nothing from another host. Screenshots land in ``reports/browser/``.

The docs site (``docs_site``) is built strictly, as the docs session builds it, into a
temporary directory and served from loopback: no network, no backend.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EXPECT_TIMEOUT_MS,
    LAPTOP,
    SAMPLING_SECONDS,
    BrowserPage,
    OpenPage,
    serve_directory,
)
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Playwright,
    Request,
    sync_playwright,
)

from qa import docs_integrity
from qa.launcher import LaunchedBackend


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium "
            "(`apt-get install -y --no-install-recommends chromium`; `nox -s browser` does it)"
        )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="session")
def dashboard_backend() -> Iterator[LaunchedBackend]:
    """A backend on SQLite sampling and evaluating alerts every half second, whose latency
    rule fires for any route with a request, and whose one alert channel (a closed loopback
    port) fails."""
    rules = {"route_latency_p95": {"bound": 0, "for_seconds": 0, "min_requests": 1}}
    channels = [{"name": "pager", "type": "webhook", "url": "http://127.0.0.1:9/alerts"}]
    env = {
        "RENUM_MONITOR__INTERVAL_SECONDS": SAMPLING_SECONDS,
        "RENUM_MONITOR__ALERTS__EVALUATION_INTERVAL_SECONDS": SAMPLING_SECONDS,
        "RENUM_MONITOR__ALERTS__RULES": json.dumps(rules),
        "RENUM_MONITOR__ALERTS__CHANNELS": json.dumps(channels),
        "RENUM_DELIVERIES__ENABLED": "true",
        "RENUM_DELIVERIES__BACKOFF_MAX_SECONDS": "1",
    }
    launched = LaunchedBackend.start("sqlite", extra_env=env)
    try:
        yield launched
    finally:
        launched.stop()


@pytest.fixture(scope="session")
def docs_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The docs site built from this tree with ``mkdocs build --strict`` (as ``nox -s docs``
    builds it, into a temporary directory), served over HTTP on loopback; yields its base URL."""
    site = tmp_path_factory.mktemp("docs-site")
    problems = docs_integrity.build_problems(docs_integrity.REPO_ROOT / "mkdocs.yml", site)
    if problems:
        pytest.fail("the docs site does not build strictly:\n" + "\n".join(problems))
    with serve_directory(site) as base_url:
        yield base_url


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """``open_page(viewport)``: a fresh context (no shared storage) and page at that size,
    recording every request; closed after the test."""
    contexts = []

    def make(viewport: dict[str, int] = LAPTOP) -> BrowserPage:
        context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        opened = BrowserPage(page)

        def record(request: Request) -> None:
            opened.requests.append(request.url)

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                opened.errors.append(message.text)

        def uncaught(error: Error) -> None:
            opened.errors.append(f"uncaught: {error}")

        page.on("request", record)
        page.on("console", console)
        page.on("pageerror", uncaught)
        return opened

    yield make
    for context in contexts:
        context.close()
