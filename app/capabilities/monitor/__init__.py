"""The monitor capability (AdvancedHealthMonitor): system figures sampled in the background
(CPU, memory, disk, file descriptors, event-loop lag, the database pool, executions), every API
request timed by route template, the engine's executions, steps and model calls counted, all
of it on ``/metrics`` and kept in a bounded in-memory history read by
``GET /api/v1/ops/monitor``. Switched off with ``RENUM_MONITOR__ENABLED=false``: no
middleware, sampler or engine observer runs, and ``/metrics`` keeps the process figures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.monitor import dashboard, routes
from app.capabilities.monitor.endpoints import EndpointStats
from app.capabilities.monitor.monitor import AdvancedHealthMonitor
from app.capabilities.monitor.system import FIGURES, Figure, SystemSampler, data_directory
from app.core.config import Settings
from app.core.metrics import Metrics

__all__ = ["CAPABILITY", "FIGURES", "AdvancedHealthMonitor", "EndpointStats", "Figure"]


def install(app: FastAPI, settings: Settings) -> None:
    metrics: Metrics = app.state.metrics
    stats = EndpointStats(metrics)
    app.state.endpoint_stats = stats
    app.state.request_observers.append(stats)  # timed by the base middleware
    app.include_router(routes.router)
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
    runtime.runner.engine.observers.append(monitor.executions)
    monitor.start()
    try:
        yield
    finally:
        runtime.runner.engine.observers.remove(monitor.executions)
        await monitor.stop()


CAPABILITY = Capability(
    name="monitor",
    summary="System, endpoint and execution metrics, their history and /api/v1/ops/monitor.",
    install=install,
    running=running,
)
