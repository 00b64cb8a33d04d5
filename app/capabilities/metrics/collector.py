"""Prometheus metrics of one backend process, for `GET /metrics`.

The process collector gives CPU seconds and resident memory (what the load-test harness reads
when it targets a deployment); the platform and GC collectors describe the interpreter; a few
application gauges are read when scraped, never updated per request, so serving traffic costs
nothing extra (see the overhead budget in DESIGN.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    CollectorRegistry,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from app import __version__
from app.core.logging import get_logger
from app.db.database import Database
from app.repositories.accounts import AccountRepository

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
QUERY_TIMEOUT_SECONDS = 1.0
log = get_logger("app.metrics")


class ProcessMetrics:
    """One registry per application (so several apps in one process never collide)."""

    def __init__(self, environment: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        if GC_COLLECTOR is not None:  # absent on interpreters without gc.get_stats
            GCCollector(registry=self.registry)
        Info("renum_build", "The running Renum build.", registry=self.registry).info(
            {"version": __version__, "environment": environment}
        )
        self.active_executions = Gauge(
            "renum_executions_active",
            "Executions pending or running across all accounts (from the database).",
            registry=self.registry,
        )
        self.pool_checked_out = Gauge(
            "renum_database_connections_in_use",
            "Database connections this process has checked out of its pool.",
            registry=self.registry,
        )

    async def render(self, database: Database) -> bytes:
        """The text exposition format, with the application gauges read now."""
        self.pool_checked_out.set(_checked_out(database.engine.pool))
        active = await _active_executions(database)
        if active is not None:
            self.active_executions.set(active)
        return generate_latest(self.registry)


def _checked_out(pool: Any) -> int:
    counter = getattr(pool, "checkedout", None)
    return int(counter()) if callable(counter) else 0


async def _active_executions(database: Database) -> int | None:
    """The per-account slot counters summed; None when the database does not answer quickly."""

    async def read() -> int:
        async with database.session() as session:
            total = await AccountRepository(session).active_executions_total()
            await session.rollback()
            return total

    try:
        return await asyncio.wait_for(read(), QUERY_TIMEOUT_SECONDS)
    except Exception as exc:  # a scrape still answers with the process metrics
        log.warning("metrics_database_unavailable", error_type=type(exc).__name__)
        return None
