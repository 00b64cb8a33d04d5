"""The monitor capability (AdvancedHealthMonitor): system figures sampled in the background
(CPU, memory, disk, file descriptors, event-loop lag, the database pool, executions), every API
request timed by route template, the engine's executions, steps and model calls counted, all
of it on ``/metrics`` and kept in a bounded in-memory history read by
``GET /api/v1/ops/monitor``; alert rules evaluated over those figures, with their alerts and
silences in the database and notifications sent through the delivery service
(``GET /api/v1/ops/alerts``, ``/api/v1/ops/silences``). Switched off with
``RENUM_MONITOR__ENABLED=false``: no middleware, sampler, engine observer or alert loop runs,
``/metrics`` keeps the process figures, and what would alert is only logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.capabilities.base import AppContext, Capability
from app.capabilities.monitor import alert_routes, dashboard, routes
from app.capabilities.monitor.alerting import CheckFigures
from app.capabilities.monitor.alerts import AlertManager
from app.capabilities.monitor.endpoints import EndpointStats
from app.capabilities.monitor.monitor import AdvancedHealthMonitor
from app.capabilities.monitor.system import FIGURES, Figure, SystemSampler, data_directory
from app.capabilities.monitor.tracing import Tracing
from app.core.alerts import LogAlertReporter
from app.core.config import Settings
from app.core.metrics import Metrics

__all__ = ["CAPABILITY", "FIGURES", "AdvancedHealthMonitor", "EndpointStats", "Figure"]


def install(app: FastAPI, settings: Settings) -> None:
    metrics: Metrics = app.state.metrics
    stats = EndpointStats(metrics)
    app.state.endpoint_stats = stats
    app.state.request_observers.append(stats)  # timed by the base middleware
    traces = settings.monitor.tracing
    if traces.otlp_endpoint is not None:
        tracing = Tracing(traces.otlp_endpoint, traces, settings.environment.value, __version__)
        app.state.tracing = tracing
        app.state.request_observers.append(tracing)
    app.include_router(routes.router)
    app.include_router(alert_routes.router)
    dashboard.install(app)  # /health/dashboard and its live stream


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """Sample in the background and observe the engine while the app runs."""
    settings = context.settings.monitor
    runtime = context.runtime
    sampler = SystemSampler(
        data_directory(context.settings.database.url),
        pool=lambda: context.database.engine.pool,
        load=runtime.runner.load,
    )
    monitor = AdvancedHealthMonitor(
        context.app.state.metrics,
        sampler,
        endpoints=context.app.state.endpoint_stats,
        interval_seconds=settings.interval_seconds,
        history_seconds=settings.history_hours * 3600,
    )
    context.app.state.monitor = monitor
    app = context.app

    def checks() -> list[CheckFigures]:
        """The health capability's latest dependency report, when it runs."""
        reports = getattr(app.state, "health_monitor", None)
        if reports is None:
            return []
        return [
            CheckFigures(entry.key, entry.critical, str(entry.status), entry.message)
            for entry in reports.snapshot().entries
        ]

    alerts = AlertManager(
        database=context.database,
        monitor=monitor,
        dispatcher=runtime.deliveries,
        settings=lambda: app.state.settings,
        checks=checks,
    )
    app.state.alert_manager = alerts
    app.state.alerts = alerts  # capabilities' reports join the monitor's alerts
    runtime.runner.engine.observers.append(monitor.executions)
    tracing: Tracing | None = getattr(app.state, "tracing", None)
    if tracing is not None:
        runtime.runner.engine.observers.append(tracing.on_engine_commit)
    monitor.start()
    alerts.start()
    try:
        yield
    finally:
        app.state.alerts = LogAlertReporter()
        await alerts.stop()
        runtime.runner.engine.observers.remove(monitor.executions)
        await monitor.stop()
        if tracing is not None:
            runtime.runner.engine.observers.remove(tracing.on_engine_commit)
            await asyncio.to_thread(tracing.shutdown)


CAPABILITY = Capability(
    name="monitor",
    summary="System, endpoint and execution metrics, their history and /api/v1/ops/monitor.",
    install=install,
    running=running,
)
