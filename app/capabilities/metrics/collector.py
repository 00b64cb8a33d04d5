"""The metrics capability's own gauges, read when scraped.

The registry and the exposition are the app's (``app.core.metrics.Metrics``, created by
``create_app``, where other capabilities define their metrics too); this module adds the
gauges read at scrape time: executions in flight (from the database) and this process's
database connections in use. Reading them at scrape time, never per request, keeps serving
traffic free of their cost (see the overhead budget in DESIGN.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.core.logging import get_logger
from app.core.metrics import CONTENT_TYPE, Metrics
from app.db.database import SQLAlchemyManager
from app.repositories.accounts import AccountRepository

__all__ = ["CONTENT_TYPE", "ScrapedGauges"]

QUERY_TIMEOUT_SECONDS = 1.0
log = get_logger("app.metrics")


class ScrapedGauges:
    """The gauges ``GET /metrics`` reads before it answers."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.active_executions = metrics.gauge(
            "renum_executions_active",
            "Executions pending or running across all accounts (from the database).",
            mode="max",  # every worker reads the same figure
        )
        self.pool_checked_out = metrics.gauge(
            "renum_database_connections_in_use",
            "Database connections checked out of the pools (summed over live workers).",
            mode="livesum",
        )

    async def render(self, database: SQLAlchemyManager) -> bytes:
        """The text exposition format, with the gauges read now."""
        self.pool_checked_out.set(_checked_out(database.engine.pool))
        active = await _active_executions(database)
        if active is not None:
            self.active_executions.set(active)
        return self.metrics.exposition()


def _checked_out(pool: Any) -> int:
    counter = getattr(pool, "checkedout", None)
    return int(counter()) if callable(counter) else 0


async def _active_executions(database: SQLAlchemyManager) -> int | None:
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
