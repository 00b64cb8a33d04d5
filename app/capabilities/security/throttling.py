"""The intrusion detection and throttling in an app: what ``install`` adds (the screening
hooks the base calls, ``screen``; 429 and the ``RateLimit`` headers in the schema of every API
operation) and what runs while the app runs (the shared counters, the
rate limits' sync, the purge of expired counters on the database)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.capabilities.security.counters import (
    CounterStore,
    DatabaseCounters,
    MemoryCounters,
    RedisCounters,
)
from app.capabilities.security.events import SecurityEvents
from app.capabilities.security.screen import Screen
from app.capabilities.security.throttle import Guard, RateLimiter
from app.core.config import Settings, ThrottleSettings
from app.core.errors import PROBLEM_MEDIA_TYPE
from app.core.logging import get_logger
from app.core.schema_additions import add_to_schema
from app.db.database import SQLAlchemyManager

log = get_logger("app.security")

PURGE_SECONDS = 300.0

RATE_LIMIT_HEADERS_DOC: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Policy": {
        "description": 'The rate limit\'s policy, as `"account";q=200;w=2` (draft-ietf-httpapi-'
        "ratelimit-headers): `q` requests per `w` seconds. On authenticated answers too.",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of the quota, as `"account";r=0;t=2`: `r` requests, '
        "whole again in `t` seconds. On authenticated answers too.",
        "schema": {"type": "string"},
    },
}
TOO_MANY = (
    "Throttled: too many failed attempts from this source or on this account (growing "
    "delays), or the account's or API key's request rate limit is reached."
)


class Throttling:
    """The parts, kept in ``app.state.throttling``: ``guard`` (detectors), ``limiter``
    (rate limits), ``events`` (security events, whose ``listeners`` the audit trail joins)."""

    def __init__(self, settings: ThrottleSettings, app: FastAPI) -> None:
        self.settings = settings
        self.events = SecurityEvents(app.state.metrics, lambda: app.state.alerts)
        # Until the app runs, counters in memory; ``running`` puts the shared store in.
        self.guard = Guard(settings, MemoryCounters(), self.events)
        self.limiter = RateLimiter(settings, self.events, spawn=self.guard.spawn)

    def store_for(self, settings: Settings, database: SQLAlchemyManager) -> CounterStore:
        """Redis when configured (``counters``: ``auto`` or ``redis``), else the database."""
        wanted = self.settings.counters
        if wanted != "database" and settings.redis_url:
            try:
                return RedisCounters(settings.redis_url)
            except ImportError:
                log.warning("security_counters_on_database", reason="redis is not installed")
        elif wanted == "redis":
            log.warning("security_counters_on_database", reason="redis_url is not set")
        return DatabaseCounters(database)

    @asynccontextmanager
    async def running(self, settings: Settings, database: SQLAlchemyManager) -> AsyncIterator[None]:
        store = self.store_for(settings, database)
        self.guard.store = store
        self.limiter.store = store
        tasks = [asyncio.create_task(self._sync_loop(), name="security-rate-limit-sync")]
        if isinstance(store, DatabaseCounters):
            tasks.append(asyncio.create_task(self._purge_loop(store), name="security-purge"))
        log.info("security_throttling_started", counters=store.name)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.guard.drain()
            await store.close()

    async def _sync_loop(self) -> None:
        interval = self.settings.limits.sync_seconds
        while True:
            await asyncio.sleep(interval)
            self.guard.prune_source_blocks()
            try:
                await self.limiter.sync()
            except Exception as exc:
                log.warning("security_rate_limit_sync_failed", error_type=type(exc).__name__)

    async def _purge_loop(self, store: CounterStore) -> None:
        while True:
            await asyncio.sleep(PURGE_SECONDS)
            try:
                await store.purge()
            except Exception as exc:
                log.warning("security_counters_purge_failed", error_type=type(exc).__name__)


def install_throttling(app: FastAPI, settings: Settings, prefix: str = "/api/") -> None:
    """The screening hooks (``screen``: no middleware), and 429 documented on every API
    operation (with the security section's throttling on)."""
    throttle = settings.security.throttle
    throttling = Throttling(throttle, app)
    app.state.throttling = throttling
    screen = Screen(
        throttling.guard,
        throttling.limiter if throttle.limits.enabled else None,
        token_paths=[app.url_path_for("refresh"), app.url_path_for("logout")],
        trusted_proxies=throttle.trusted_proxies,
    )
    app.state.request_screen = screen
    app.state.problem_observers.append(screen.refused)

    def document_429(schema: dict[str, Any]) -> None:
        for path, item in schema.get("paths", {}).items():
            if not path.startswith(prefix):
                continue
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                found = operation["responses"].setdefault(
                    "429",
                    {
                        "description": TOO_MANY,
                        "content": {
                            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                        },
                    },
                )
                found["headers"] = {**found.get("headers", {}), **RATE_LIMIT_HEADERS_DOC}

    add_to_schema(app, document_429)
