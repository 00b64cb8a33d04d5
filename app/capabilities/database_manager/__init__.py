"""The database manager capability (SQLAlchemyManager's operations layer): a circuit breaker
that answers 503 with ``Retry-After`` at once while the database is away and closes when it
answers again, the pool's and the breaker's figures on ``/metrics``, the per-request query
budget in development and test, the slow-query log, reads tried again after a transient
error, authenticated reads answered from their last known state during an outage, and the
retention purge. The engines, pools and drivers themselves are the database layer's
(``app.db.database``). Switched off with ``RENUM_DATABASE_MANAGER__ENABLED=false``: requests
wait for the database as the base layer does, a lost database answers 500, no statement is
counted or timed, no answer is kept, and nothing is purged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import Counter

from app.capabilities.base import AppContext, Capability
from app.capabilities.database_manager.last_known import (
    API_PREFIX,
    COUNTED_METRIC,
    OUTCOMES,
    LastKnownReads,
)
from app.capabilities.database_manager.outage import OutageWatch, install_answers
from app.capabilities.database_manager.pool_metrics import PoolMetrics
from app.capabilities.database_manager.query_budget import QueryBudget
from app.capabilities.database_manager.retention import Retention
from app.capabilities.database_manager.retry import PREFIX as RETRY_PREFIX
from app.capabilities.database_manager.retry import RetryTransientReads
from app.core.config import Settings
from app.core.middleware import add_scoped_middleware
from app.db.breaker import CircuitBreaker

__all__ = ["CAPABILITY", "OutageWatch", "PoolMetrics", "QueryBudget", "Retention"]


def install(app: FastAPI, settings: Settings) -> None:
    install_answers(app)
    add_scoped_middleware(
        app, RetryTransientReads, prefixes=(RETRY_PREFIX,), settings=lambda: app.state.settings
    )
    last_known = Counter(
        COUNTED_METRIC,
        "Authenticated API reads kept, replayed during a database outage, or missed then.",
        ["outcome"],
        registry=app.state.metrics.shared,
    )
    for outcome in OUTCOMES:
        last_known.labels(outcome)  # every outcome shows, at 0 until counted
    add_scoped_middleware(
        app, LastKnownReads, prefixes=(API_PREFIX,), state=app.state, counter=last_known
    )
    budget = QueryBudget(lambda: app.state.settings, app.state.metrics)
    app.state.query_budget = budget
    if budget.counting:  # told by the base middleware where requests are counted
        app.state.request_observers.append(budget)


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    app = context.app

    def current() -> Settings:
        settings: Settings = app.state.settings  # live: a reload replaces it
        return settings

    breaker = CircuitBreaker(
        failures=context.settings.database_manager.breaker_failures,
        retry_after=lambda: current().database_manager.retry_after_seconds,
        on_open=context.database.terminate_in_use,
    )
    context.database.attach_breaker(breaker)
    app.state.database_watch = watch = OutageWatch(context.database, breaker, current)
    PoolMetrics(app.state.metrics, context.database)
    context.database.attach_query_hooks(app.state.query_budget.hooks)
    watch.start()
    app.state.retention = retention = Retention(
        context.database.engine,
        lambda: current().database_manager.retention,
        app.state.metrics,
    )
    retention.start()
    try:
        yield
    finally:
        await retention.stop()
        await watch.stop()
        context.database.attach_query_hooks(None)
        context.database.attach_breaker(None)


CAPABILITY = Capability(
    name="database_manager",
    summary="A circuit breaker with clean 503s during database outages, pool figures, the "
    "query budget.",
    install=install,
    running=running,
)
