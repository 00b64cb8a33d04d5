"""AdvancedHealthMonitor: the process's system figures, endpoint performance and execution
metrics in one place, sampled in the background and kept in a bounded history.

Every ``interval`` seconds it samples the system (``system.SystemSampler``, in a thread), adds
the figures to the history and to the shared gauges of ``/metrics``, and records each route's
running totals so that rates over the last minutes can be read without a database round trip.
``snapshot()`` is what the dashboard shows; ``route_window()`` is what alert rules read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Gauge

from app.capabilities.monitor.endpoints import EndpointStats, RouteFigures, quantile
from app.capabilities.monitor.executions import ExecutionMetrics
from app.capabilities.monitor.history import History, Point
from app.capabilities.monitor.system import FIGURES, LoopLag, SystemSampler
from app.core.logging import get_logger
from app.core.metrics import GaugeMode, Metrics, multiprocess_dir

log = get_logger("app.monitor")

# System figures exported on /metrics (name, documentation, how workers' values combine,
# factor from the sampled unit to the exported one).
EXPORTED: dict[str, tuple[str, str, GaugeMode, float]] = {
    "host_cpu_percent": ("renum_host_cpu_ratio", "Host CPU in use (0-1).", "max", 0.01),
    "host_memory_used_percent": (
        "renum_host_memory_used_ratio",
        "Memory in use on the host (0-1; the live workers' highest).",
        "livemax",
        0.01,
    ),
    "host_memory_available_bytes": (
        "renum_host_memory_available_bytes",
        "Memory available on the host.",
        "max",
        1.0,
    ),
    "disk_used_percent": (
        "renum_disk_used_ratio",
        "Usage of the data directory's disk (0-1).",
        "max",
        0.01,
    ),
    "disk_free_bytes": (
        "renum_disk_free_bytes",
        "Free space on the data directory's disk.",
        "min",
        1.0,
    ),
    "loop_lag_ms": (
        "renum_event_loop_lag_seconds",
        "How late the event loop ran the monitor's timer (worst worker).",
        "max",
        0.001,
    ),
    "pool_size": ("renum_database_pool_size", "Database pool size (all workers).", "livesum", 1.0),
    "pool_overflow": (
        "renum_database_pool_overflow",
        "Database connections beyond the pool size (all workers).",
        "livesum",
        1.0,
    ),
    "executions_running": (
        "renum_executions_running",
        "Executions being driven (all workers).",
        "livesum",
        1.0,
    ),
    "executions_queued": (
        "renum_executions_queued",
        "Executions waiting for a slot in a worker (all workers).",
        "livesum",
        1.0,
    ),
}


@dataclass(frozen=True)
class RouteWindow:
    """One route over a recent window: requests and 5xx answers in it, per second rates, and
    its p95 latency within the window (None without a request in it)."""

    figures: RouteFigures
    window_seconds: float
    requests: float
    errors: float
    p95: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.window_seconds if self.window_seconds > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class _Totals:
    at: float
    routes: dict[tuple[str, str], RouteFigures] = field(default_factory=dict)


def _window(now: RouteFigures, before: RouteFigures | None, span: float) -> RouteWindow:
    """A route's figures since ``before`` (its totals at the window's start, if it had any)."""
    if before is None:
        return RouteWindow(now, span, now.requests, now.errors, now.p95)
    earlier = dict(before.buckets)
    buckets = [(bound, count - earlier.get(bound, 0.0)) for bound, count in now.buckets]
    return RouteWindow(
        now,
        span,
        now.requests - before.requests,
        now.errors - before.errors,
        quantile(buckets, 0.95),
    )


class AdvancedHealthMonitor:
    """Samples, keeps and serves one process's figures (see the module's docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        sampler: SystemSampler,
        *,
        endpoints: EndpointStats,
        interval_seconds: float,
        history_seconds: float,
        window_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sampler = sampler
        self.interval_seconds = interval_seconds
        self.window_seconds = window_seconds
        self.history = History(interval_seconds, history_seconds)
        self.endpoints = endpoints  # filled by the middleware the capability installed
        self.executions = ExecutionMetrics(metrics)
        self.clock = clock
        self.pid = os.getpid()
        self.started_at = clock()
        self._gauges: dict[str, tuple[Gauge, float]] = {
            figure: (metrics.gauge(name, doc, mode), factor)
            for figure, (name, doc, mode, factor) in EXPORTED.items()
        }
        self.metrics = metrics
        keep = max(2, round(window_seconds / interval_seconds) + 1)
        self._totals: deque[_Totals] = deque(maxlen=keep)  # this process's
        self._service_totals: deque[_Totals] = deque(maxlen=keep)  # every worker's
        self._task: asyncio.Task[None] | None = None

    # -- sampling -------------------------------------------------------------------------------

    def record(self, figures: dict[str, float | None]) -> None:
        """Add one sample of the system figures and the routes' totals."""
        now = self.clock()
        self.history.add(now, figures)
        for figure, (gauge, factor) in self._gauges.items():
            value = figures.get(figure)
            if value is not None:
                gauge.set(value * factor)
        self.endpoints.publish_in_flight()
        self._totals.append(self._snapshot(now, service=False))
        if multiprocess_dir() is not None:
            self._service_totals.append(self._snapshot(now, service=True))

    def _snapshot(self, now: float, *, service: bool) -> _Totals:
        registry = self.metrics.service_registry() if service else None
        rows = self.endpoints.table(registry)
        return _Totals(now, {(row.method, row.route): row for row in rows})

    async def sample_once(self, loop_lag_ms: float | None = None) -> None:
        self.record(await asyncio.to_thread(self.sampler.sample, loop_lag_ms))

    async def _run(self) -> None:
        lag = LoopLag()
        while True:
            try:
                await self.sample_once(lag.woke())
            except Exception as exc:  # a failed sample is logged; the next one may work
                log.warning("monitor_sample_failed", error_type=type(exc).__name__)
                self.endpoints.flush()  # the other workers' scrapes still get this one's figures
            lag.expect(self.interval_seconds)
            await asyncio.sleep(self.interval_seconds)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="renum-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.endpoints.flush()  # a stopping worker's last requests still count

    # -- reading --------------------------------------------------------------------------------

    def route_windows(self, *, service: bool = False) -> list[RouteWindow]:
        """Each route's figures now, with its requests, errors and p95 since the oldest totals
        the window keeps (a route first seen since then counts from zero): this process's,
        or with ``service`` every worker's (the same under one process)."""
        now = self.clock()
        combined = service and multiprocess_dir() is not None
        kept = self._service_totals if combined else self._totals
        rows = self.endpoints.table(self.metrics.service_registry() if combined else None)
        if not kept:  # before the first sample: no window yet (not the lifetime's figures)
            return [_window(row, row, 0.0) for row in rows]
        first = kept[0]
        span = now - first.at
        return [_window(row, first.routes.get((row.method, row.route)), span) for row in rows]

    def series(self, figure: str, since: float | None = None) -> list[Point]:
        return self.history.points(figure, since)

    def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows: the latest figures with their units, every route's
        figures (totals, recent rate and error ratio, quantiles), the slowest routes and the
        executions in this process."""
        latest = self.history.latest()
        windows = self.route_windows()
        slowest = sorted(
            (w for w in windows if w.figures.p95 is not None),
            key=lambda w: w.figures.p95 or 0.0,
            reverse=True,
        )[:5]
        return {
            "pid": self.pid,
            "at": self.clock(),
            "interval_seconds": self.interval_seconds,
            "window_seconds": windows[0].window_seconds if windows else 0.0,
            "system": {
                name: {"value": latest.get(name), "unit": unit, "meaning": meaning}
                for name, (unit, meaning) in FIGURES.items()
            },
            "routes": [_route_out(w) for w in windows],
            "slowest": [_route_out(w) for w in slowest],
            "executions": {
                "running": latest.get("executions_running", 0.0),
                "queued": latest.get("executions_queued", 0.0),
            },
        }


def _route_out(window: RouteWindow) -> dict[str, Any]:
    figures = window.figures
    return {
        "method": figures.method,
        "route": figures.route,
        "requests": figures.requests,
        "errors": figures.errors,
        "rate_per_second": round(window.rate, 3),
        "error_ratio": round(window.error_ratio, 4),
        "p50_seconds": figures.p50,
        "p95_seconds": figures.p95,
        "p99_seconds": figures.p99,
    }
