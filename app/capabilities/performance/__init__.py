"""The performance capability (PerformanceOptimizer): responses compressed by the client's
``Accept-Encoding`` without ever holding an event stream back (``compression``), profiles of
slow requests taken with pyinstrument, listed for admins at ``/api/v1/ops/profiles``
(``profiling``), costly reads (usage reports, execution lists) kept until a write changes
them (``cache``), and API reads answered ``304`` when the client has them already
(``validation``). Switched off with ``RENUM_PERFORMANCE__ENABLED=false``: no middleware of its
own runs, the routes do not exist and every read is computed; each part has its own switch as
well (``performance.compression.enabled``, ``performance.cache.enabled``,
``performance.profiling.enabled``, the latter live)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.performance import routes, validation
from app.capabilities.performance.cache import SmartCache
from app.capabilities.performance.compression import Compression
from app.capabilities.performance.profiling import SlowRequests, p95s_from
from app.capabilities.performance.validation import ConditionalReads
from app.core.config import Settings
from app.core.middleware import add_scoped_middleware

__all__ = ["CAPABILITY", "PerformanceOptimizer", "SlowRequests", "SmartCache"]


class PerformanceOptimizer:
    """What the capability adds to one app: the profiler of slow requests (a request observer
    of the base middleware), the compression middleware, and the cache of costly reads (the
    runtime's, while the app runs). It is ``app.state.performance``."""

    def __init__(self, settings: Settings, endpoint_stats: object = None) -> None:
        table = getattr(endpoint_stats, "table", None)  # the monitor's figures, when it is on
        self.slow_requests = SlowRequests(
            settings.performance.profiling, p95s_from(table) if table else None
        )
        self.cache: SmartCache | None = None

    def apply(self, settings: Settings) -> None:
        """Follow a live reload of the settings."""
        self.slow_requests.apply(settings.performance.profiling)

    def install(self, app: FastAPI, settings: Settings) -> None:
        app.state.request_observers.append(self.slow_requests)
        if settings.performance.cache.enabled:
            add_scoped_middleware(app, ConditionalReads, prefixes=validation.READ_PATHS)
            validation.install_schema(app)
        if settings.performance.compression.enabled:
            app.add_middleware(Compression, settings=settings.performance.compression)
        app.include_router(routes.router)


def install(app: FastAPI, settings: Settings) -> None:
    optimizer = PerformanceOptimizer(settings, getattr(app.state, "endpoint_stats", None))
    app.state.performance = optimizer
    optimizer.install(app, settings)


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """The cache of costly reads in the runtime (told of the engine's commits), and live
    reloads followed (the configuration capability's, when it is on)."""
    optimizer: PerformanceOptimizer = context.app.state.performance
    manager = getattr(context.app.state, "config_manager", None)
    if manager is not None:
        manager.on_change(optimizer.apply)
    settings = context.settings
    if not settings.performance.cache.enabled:
        yield
        return
    cache = SmartCache(
        settings.performance.cache, context.app.state.metrics.shared, settings.redis_url
    )
    optimizer.cache = context.runtime.cache = cache
    context.runtime.runner.engine.observers.append(cache.on_engine_commit)
    try:
        yield
    finally:
        await cache.close()


CAPABILITY = Capability(
    name="performance",
    summary="Responses compressed by Accept-Encoding; slow requests profiled for admins.",
    install=install,
    running=running,
)
