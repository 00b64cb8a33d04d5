"""The pages Renum serves, in a real browser under their Content-Security-Policy (issue 17):
the API explorer (`/docs`, Swagger UI from vendored assets, its inline start-up script allowed
by the answer's nonce) renders the operations and runs one against the backend, and the
landing page (`/`, its inline style allowed the same way) shows its links, with no policy
violation or other error logged and nothing loaded from another host."""

from __future__ import annotations

from browser_support import LAPTOP, OpenPage, assert_same_origin_and_clean
from playwright.sync_api import expect

from qa.launcher import LaunchedBackend


def test_the_explorer_runs_under_its_policy(
    dashboard_backend: LaunchedBackend, open_page: OpenPage
) -> None:
    base = dashboard_backend.base_url
    opened = open_page(LAPTOP)
    page = opened.page
    response = page.goto(f"{base}/docs")
    assert response is not None
    assert "'nonce-" in response.headers["content-security-policy"]
    # The inline script ran: Swagger UI fetched the schema and drew the operations.
    operation = page.locator("#operations-health-ready")
    expect(operation).to_be_visible()
    operation.locator(".opblock-summary").click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    status = page.locator(".live-responses-table tr.response .response-col_status")
    expect(status).to_have_text("200")
    assert any(url.endswith("/openapi.json") for url in opened.requests)
    assert_same_origin_and_clean(opened, base)


def test_the_landing_page_keeps_its_style_under_its_policy(
    dashboard_backend: LaunchedBackend, open_page: OpenPage
) -> None:
    base = dashboard_backend.base_url
    opened = open_page(LAPTOP)
    page = opened.page
    page.goto(f"{base}/")
    expect(page.get_by_role("link", name="/docs")).to_be_visible()
    # The inline style applied: the body is a centred column, not the browser's default.
    width = page.evaluate("getComputedStyle(document.body).maxWidth")
    assert width != "none"
    assert_same_origin_and_clean(opened, base)
