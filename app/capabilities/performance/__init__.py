"""The performance capability (PerformanceOptimizer): responses compressed by the client's
``Accept-Encoding`` without ever holding an event stream back (``compression``), and profiles
of slow requests taken with pyinstrument, listed for admins at ``/api/v1/ops/profiles``
(``profiling``). Switched off with ``RENUM_PERFORMANCE__ENABLED=false``: no middleware of its
own runs and the routes do not exist; each part has its own switch as well
(``performance.compression.enabled``, ``performance.profiling.enabled``, the latter live)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.performance import routes
from app.capabilities.performance.compression import Compression
from app.capabilities.performance.profiling import SlowRequests, p95s_from
from app.core.config import Settings

__all__ = ["CAPABILITY", "PerformanceOptimizer", "SlowRequests"]


class PerformanceOptimizer:
    """What the capability adds to one app: the profiler of slow requests (a request observer
    of the base middleware) and the compression middleware. It is ``app.state.performance``."""

    def __init__(self, settings: Settings, endpoint_stats: object = None) -> None:
        table = getattr(endpoint_stats, "table", None)  # the monitor's figures, when it is on
        self.slow_requests = SlowRequests(
            settings.performance.profiling, p95s_from(table) if table else None
        )

    def apply(self, settings: Settings) -> None:
        """Follow a live reload of the settings."""
        self.slow_requests.apply(settings.performance.profiling)

    def install(self, app: FastAPI, settings: Settings) -> None:
        app.state.request_observers.append(self.slow_requests)
        if settings.performance.compression.enabled:
            app.add_middleware(Compression, settings=settings.performance.compression)
        app.include_router(routes.router)


def install(app: FastAPI, settings: Settings) -> None:
    optimizer = PerformanceOptimizer(settings, getattr(app.state, "endpoint_stats", None))
    app.state.performance = optimizer
    optimizer.install(app, settings)


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """Follow live reloads (the configuration capability's, when it is on)."""
    manager = getattr(context.app.state, "config_manager", None)
    if manager is not None:
        manager.on_change(context.app.state.performance.apply)
    yield


CAPABILITY = Capability(
    name="performance",
    summary="Responses compressed by Accept-Encoding; slow requests profiled for admins.",
    install=install,
    running=running,
)
