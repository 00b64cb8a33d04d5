"""The health dashboard (`/health/dashboard`) in a real browser: an admin logs in through the
form and sees the dependency table, the charts with data and the endpoint table update live
after requests the test makes, without a reload; a non-admin is refused with a clear message;
the page loads nothing from another host and reads well at laptop and phone widths
(screenshots in `reports/browser/`). Plus the stream itself over HTTP: admin only, one
`snapshot` event per interval, ended at once when the server shuts down."""

from __future__ import annotations

import json
import re
import signal

import httpx
from browser_support import LAPTOP, PHONE, OpenPage, assert_same_origin_and_clean
from playwright.sync_api import Page, expect

from qa.client import API, ApiClient
from qa.factories import tenant_with_owner
from qa.launcher import LaunchedBackend

DASHBOARD = "/health/dashboard"
STREAM = f"{API}/ops/monitor/stream"
PROBE_ROUTE = f"{API}/accounts"


def log_in(page: Page, base_url: str, email: str, password: str) -> None:
    page.goto(f"{base_url}{DASHBOARD}")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def route_row(page: Page, method: str, route: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#routes-table tbody tr[data-route="{method} {route}"]')


def test_an_admin_sees_dependencies_charts_and_live_updates(
    dashboard_backend: LaunchedBackend, open_page: OpenPage
) -> None:
    base = dashboard_backend.base_url
    opened = open_page(LAPTOP)
    page = opened.page
    log_in(page, base, dashboard_backend.admin_email, dashboard_backend.admin_password)

    # Overall status and each dependency check.
    expect(page.locator("#main")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"Status: (pass|warn)"))
    checks = page.locator("#deps-table tbody tr")
    expect(checks.first).to_be_visible()
    expect(page.locator('#deps-table tbody tr[data-check^="database"]')).to_have_count(1)
    expect(page.locator("#deps-summary")).to_contain_text("checks")

    # A chart with data: a drawn canvas, and its text alternative with the latest value.
    chart = page.locator("#gauge-host_cpu_percent-chart")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart).to_have_attribute("aria-label", re.compile(r"Latest: \d[\d.,]* %"))
    expect(page.locator("#gauge-loop_lag_ms-caption")).to_contain_text(
        re.compile(r"[1-9]\d* points of history")
    )
    drawn = chart.locator("canvas").evaluate(
        """canvas => {
            const pixels = canvas.getContext("2d")
                .getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted += 1;
            return painted;
        }"""
    )
    assert drawn > 100
    expect(page.locator("#process-note")).to_contain_text(re.compile(r"process \d+"))
    # Alerts: the latency rule fires for the routes the page itself called, and the one
    # channel (nothing listens there) shows as failing.
    alerts = page.locator("#alerts")
    expect(alerts).to_contain_text(re.compile(r"warning, firing: .* p95"))
    expect(alerts).to_contain_text("route_latency_p95")
    expect(page.locator("#alert-channels")).to_contain_text(
        "pager (webhook, warning and up): failing"
    )

    # Live: requests the test makes show up without a reload.
    page.evaluate("window.__notReloaded = true")
    with ApiClient(base) as api:
        api.login(dashboard_backend.admin_email, dashboard_backend.admin_password)
        for _ in range(3):
            assert api.get(PROBE_ROUTE).status_code == 200
        row = route_row(page, "GET", PROBE_ROUTE)
        expect(row).to_have_count(1)
        requests_cell = row.locator("td").nth(1)  # method, [route is a th], requests
        expect(requests_cell).to_have_text("3")
        for _ in range(4):
            assert api.get(PROBE_ROUTE).status_code == 200
        expect(requests_cell).to_have_text("7")
    expect(page.locator("#connection")).to_contain_text("Live")
    assert page.evaluate("window.__notReloaded") is True

    # The endpoint table sorts by its header buttons, with the mouse and the keyboard.
    p95 = page.locator("#routes-table thead th").filter(has=page.get_by_role("button", name="p95"))
    p95.get_by_role("button").click()
    expect(p95).to_have_attribute("aria-sort", "descending")
    p95.get_by_role("button").focus()
    page.keyboard.press("Enter")
    expect(p95).to_have_attribute("aria-sort", "ascending")

    opened.screenshot("dashboard-laptop")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Email")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    assert_same_origin_and_clean(opened, base)


def test_the_dashboard_reads_well_on_a_phone(
    dashboard_backend: LaunchedBackend, open_page: OpenPage
) -> None:
    base = dashboard_backend.base_url
    opened = open_page(PHONE)
    page = opened.page
    log_in(page, base, dashboard_backend.admin_email, dashboard_backend.admin_password)
    expect(page.locator("#deps-table tbody tr").first).to_be_visible()
    expect(page.locator("#gauge-disk_used_percent-chart canvas")).to_have_count(1)
    expect(page.locator("#routes-table tbody tr").first).to_be_visible()
    # One column: nothing wider than the screen (wide tables scroll inside their box).
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    opened.screenshot("dashboard-phone")
    assert_same_origin_and_clean(opened, base)


def test_a_non_admin_is_refused_with_a_clear_message(
    dashboard_backend: LaunchedBackend, open_page: OpenPage
) -> None:
    tenant, owner = tenant_with_owner(
        dashboard_backend.base_url, dashboard_backend.admin_email, dashboard_backend.admin_password
    )
    owner.close()
    opened = open_page(LAPTOP)
    page = opened.page
    log_in(page, dashboard_backend.base_url, tenant.owner.email, tenant.owner.password)
    expect(page.get_by_role("alert")).to_contain_text("platform admins only")
    expect(page.locator("#main")).to_be_hidden()
    expect(page.get_by_label("Email")).to_be_visible()
    opened.screenshot("dashboard-refused")


def test_wrong_credentials_are_said_so(
    dashboard_backend: LaunchedBackend, open_page: OpenPage
) -> None:
    page = open_page(LAPTOP).page
    log_in(page, dashboard_backend.base_url, dashboard_backend.admin_email, "not-the-password")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")


def test_the_page_is_public_and_keeps_to_its_origin(dashboard_backend: LaunchedBackend) -> None:
    response = httpx.get(f"{dashboard_backend.base_url}{DASHBOARD}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self'" in policy
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', response.text):
        assert httpx.get(f"{dashboard_backend.base_url}{asset}").status_code == 200, asset
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', response.text))


class Frames:
    """The frames of an SSE response, read as they come (comments included)."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.iter_text()
        self.buffer = ""

    def take(self, count: int) -> list[str]:
        frames: list[str] = []
        while len(frames) < count:
            if "\n\n" in self.buffer:
                frame, self.buffer = self.buffer.split("\n\n", 1)
                frames.append(frame)
            else:
                self.buffer += next(self.chunks)
        return frames

    def rest(self) -> str:
        """Everything until the server ends the response."""
        return self.buffer + "".join(self.chunks)


def snapshot_of(frame: str) -> dict[str, object]:
    lines = frame.split("\n")
    assert lines[0] == "event: snapshot", frame
    body: dict[str, object] = json.loads(lines[1].removeprefix("data: "))
    return body


def test_the_stream_is_for_admins_and_sends_a_snapshot_each_interval(
    dashboard_backend: LaunchedBackend,
) -> None:
    base = dashboard_backend.base_url
    sse = {"Accept": "text/event-stream"}
    assert httpx.get(f"{base}{STREAM}", headers=sse).status_code == 401
    _, owner = tenant_with_owner(
        base, dashboard_backend.admin_email, dashboard_backend.admin_password
    )
    try:
        refused = owner.get(STREAM, headers=sse)
    finally:
        owner.close()
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    with ApiClient(base) as api:
        api.login(dashboard_backend.admin_email, dashboard_backend.admin_password)
        single = api.get(STREAM)  # without the header: one snapshot as JSON
        assert single.status_code == 200
        assert single.json()["dependencies"]["status"] in {"pass", "warn"}
        with api.stream("GET", STREAM, headers=sse) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = Frames(response).take(3)
    assert frames[0] == "retry: 2000"
    first, second = snapshot_of(frames[1]), snapshot_of(frames[2])
    assert {"pid", "system", "routes", "slowest", "executions", "dependencies"} <= set(first)
    checks = first["dependencies"]["checks"]  # type: ignore[index]
    assert any(key.startswith("database") for key in checks)
    assert second["at"] > first["at"]  # type: ignore[operator]


def test_the_stream_ends_at_once_when_the_server_shuts_down() -> None:
    server = LaunchedBackend.start("sqlite", extra_env={"RENUM_MONITOR__INTERVAL_SECONDS": "60"})
    try:
        api = ApiClient(server.base_url)
        sse = {"Accept": "text/event-stream"}
        with (
            api,
            api.login(server.admin_email, server.admin_password).stream(
                "GET", STREAM, headers=sse
            ) as response,
        ):
            frames = Frames(response)
            assert snapshot_of(frames.take(2)[1])["interval_seconds"] == 60
            assert server.process is not None
            server.process.terminate()  # SIGTERM, as a deployment stops it
            rest = frames.rest()
        assert rest.rstrip().endswith(": server shutting down; reconnect"), rest
        assert server.process.wait(timeout=30) in {0, -signal.SIGTERM}
    finally:
        server.stop()
