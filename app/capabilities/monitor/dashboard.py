"""The health dashboard: the page at ``/health/dashboard`` and its live feed,
``GET /api/v1/ops/monitor/stream``.

The page is static (HTML, script and styles under ``app/web/static/dashboard/``, the chart
library vendored under ``app/web/static/vendor/``, both served by this module under
``/health/dashboard/``) and public: it holds no data. Its script logs in with the API's own
token flow and reads the admin-only operations: the snapshot and the history of
``/api/v1/ops/monitor``, the dependency report of ``/health/dependencies`` and the stream
below. A Content-Security-Policy keeps the page to its own origin.

The stream sends one ``snapshot`` event each sampling interval: the body of
``GET /api/v1/ops/monitor`` plus the dependency report (its status, output and every check,
as a platform admin sees it on ``/health/dependencies``), with a keep-alive comment while an
interval is longer than the heartbeat. A shutting-down server ends it at once (the browser
reconnects, to another process if there is one). Without ``Accept: text/event-stream`` the
operation answers one such snapshot as JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from app.api.deps import AdminDep, SessionDep, ShutdownDep
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.capabilities.monitor.alert_routes import AlertsOut, alerts_report
from app.capabilities.monitor.alerts import AlertManager
from app.capabilities.monitor.monitor import AdvancedHealthMonitor
from app.capabilities.monitor.routes import MonitorDep, MonitorSnapshot
from app.core.middleware import hold_open
from app.core.shutdown import GracefulShutdown
from app.schemas.common import problems

STATIC_DIR = Path(__file__).parents[2] / "web" / "static"
PAGE_PATH = "/health/dashboard"
# What the page loads, each folder served under the page's path.
ASSET_DIRS = {"assets": STATIC_DIR / "dashboard", "vendor": STATIC_DIR / "vendor"}
SSE_HEARTBEAT_SECONDS = 15.0
STREAM_EXAMPLE = (
    "retry: 2000\n\n"
    'event: snapshot\ndata: {"pid":4242,"at":1764835200.0,"interval_seconds":10.0,'
    '"window_seconds":300.0,"system":{...},"routes":[...],"slowest":[...],'
    '"executions":{"running":0.0,"queued":0.0},'
    '"dependencies":{"status":"pass","output":null,"checks":{...}},'
    '"alerts":{"active":[...],"recent":[...],"channels":[...],"evaluating":true}}\n\n'
    ": keep-alive\n\n"
)
# The page loads and connects to its own origin only; no inline script or style runs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = PrefixRouter(prefix="/api/v1/ops", tags=["ops"], dependencies=[CheckInputs])


class DependenciesOut(BaseModel):
    """The dependency report as `/health/dependencies` gives it to a platform admin."""

    status: Literal["pass", "warn", "fail"]
    output: str | None = Field(None, description="What is not passing, in one line.")
    checks: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict,
        description="Every check by `kind:measurement` (IETF health+json check objects).",
    )


class LiveSnapshot(MonitorSnapshot):
    """One event of the stream: the monitor's snapshot, the dependency report and the
    alerts."""

    dependencies: DependenciesOut | None = Field(
        description="The dependency report; None when the health capability is switched off."
    )
    alerts: AlertsOut | None = Field(
        description="The alerts and channels as this process last read them (once per "
        "evaluation interval), as `GET /api/v1/ops/alerts` answers; None before the first read."
    )


class _Report(Protocol):
    def health_json(self, details: bool) -> dict[str, Any]: ...


class _Reports(Protocol):
    def snapshot(self) -> _Report: ...


def live_snapshot(
    monitor: AdvancedHealthMonitor, health: _Reports | None, alerts: AlertManager | None
) -> LiveSnapshot:
    """The monitor's snapshot with the dependency report (``health`` is the health
    capability's monitor, when it runs) and the alerts the process last read."""
    body = dict(monitor.snapshot())
    body["dependencies"] = health.snapshot().health_json(details=True) if health else None
    body["alerts"] = None
    view = alerts.view if alerts is not None else None
    if alerts is not None and view is not None and view.refreshed_at is not None:
        body["alerts"] = alerts_report(
            view.alerts,
            view.silences,
            view.channels,
            alerts.config,
            datetime.fromtimestamp(view.refreshed_at, UTC),
            view.evaluation,
        )
    return LiveSnapshot.model_validate(body)


async def _shutdown_within(shutdown: GracefulShutdown, seconds: float) -> bool:
    """Wait up to ``seconds``; whether the shutdown began meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await shutdown.wait()
    except TimeoutError:
        return False
    return True


async def snapshot_events(
    monitor: AdvancedHealthMonitor,
    health: _Reports | None,
    alerts: AlertManager | None,
    shutdown: GracefulShutdown,
    heartbeat_seconds: float = SSE_HEARTBEAT_SECONDS,
) -> AsyncIterator[str]:
    """The stream's frames: a snapshot now and then every interval, keep-alive comments in
    between when the interval is longer than the heartbeat, a goodbye on shutdown."""
    loop = asyncio.get_running_loop()
    with shutdown.hold():
        yield "retry: 2000\n\n"
        while not shutdown.begun:
            payload = json.dumps(
                live_snapshot(monitor, health, alerts).model_dump(mode="json"),
                separators=(",", ":"),
            )
            yield f"event: snapshot\ndata: {payload}\n\n"
            due = loop.time() + monitor.interval_seconds
            while (left := due - loop.time()) > 0:
                if await _shutdown_within(shutdown, min(left, heartbeat_seconds)):
                    break
                if due - loop.time() > 0:
                    yield ": keep-alive\n\n"
        yield ": server shutting down; reconnect\n\n"


def health_reports(request: Request) -> _Reports | None:
    reports: _Reports | None = getattr(request.app.state, "health_monitor", None)
    return reports


def alert_manager(request: Request) -> AlertManager | None:
    manager: AlertManager | None = getattr(request.app.state, "alert_manager", None)
    return manager


@router.get(
    "/monitor/stream",
    response_model=LiveSnapshot,
    summary="The monitor's snapshot and the dependency report, live (Server-Sent Events)",
    description="With `Accept: text/event-stream`, one `snapshot` event each sampling "
    "interval (`RENUM_MONITOR__INTERVAL_SECONDS`), its data the body of "
    "`GET /api/v1/ops/monitor` plus `dependencies` (the report of `/health/dependencies` "
    "with every check); a keep-alive comment every 15 seconds while an interval is longer. "
    "A server that shuts down ends the stream at once (reconnect). Without that header, one "
    "snapshot as JSON. What the dashboard at `/health/dashboard` shows; each process sends "
    "its own figures (`pid`).",
    responses={
        **problems(401, 403),
        200: {
            "description": "The snapshot now, or the live stream of them.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": STREAM_EXAMPLE,
                }
            },
        },
    },
)
async def stream_monitor(
    request: Request,
    _: AdminDep,
    session: SessionDep,
    monitor: MonitorDep,
    shutdown: ShutdownDep,
) -> Any:
    health = health_reports(request)
    alerts = alert_manager(request)
    if "text/event-stream" in request.headers.get("accept", ""):
        # The session that authenticated the caller would stay open for as long as the
        # stream (and on SQLite its transaction holds the write lock): end it now; the
        # stream reads memory only.
        await session.close()
        hold_open(request.scope)
        return StreamingResponse(
            snapshot_events(monitor, health, alerts, shutdown),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return live_snapshot(monitor, health, alerts)


def install(app: FastAPI) -> None:
    """Add the stream, the page and the page's assets to the app (the page is read here, once:
    serving it touches no disk)."""
    html = (ASSET_DIRS["assets"] / "index.html").read_text(encoding="utf-8")
    page_router = PrefixRouter(include_in_schema=False)

    @page_router.get(PAGE_PATH, response_class=HTMLResponse)
    async def health_dashboard() -> HTMLResponse:
        """The dashboard's page: public, as it holds no data (its script asks for an admin's
        login and reads the admin-only operations)."""
        return HTMLResponse(html, headers=PAGE_HEADERS)

    app.include_router(router)
    app.include_router(page_router)
    for name, directory in ASSET_DIRS.items():
        app.mount(f"{PAGE_PATH}/{name}", StaticFiles(directory=directory), name=f"dash-{name}")
