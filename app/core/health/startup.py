"""Start-up of the health layer: migrate when the database lets us, validate every dependency
once, log the report as one structured event, stop a production start on a failed critical
dependency (unless ``RENUM_HEALTH__START_DEGRADED``), and hand the report to the monitor. A
degraded start finishes later, without a restart: once the database answers, the skipped
migrations are applied and the first admin is created."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from app.core.config import Environment, Settings
from app.core.dependency_validator import DependencyValidator, tuned
from app.core.health.checks import DatabaseCheck
from app.core.health.monitor import HealthMonitor
from app.core.logging import get_logger
from app.db import migrate
from app.db.database import Database

log = get_logger("app.health")


class StartupBlocked(RuntimeError):
    """A critical dependency failed at start-up in production; the message says which and how
    to fix it."""


async def migrate_if_possible(settings: Settings, database: Database) -> bool:
    """Apply pending migrations when the database answers within the database check's timeout;
    return whether they were applied. A database that is down, hung or cannot be migrated is
    reported by the validation that follows (with its fix) instead of crashing or hanging
    start-up here."""
    timeout = tuned(DatabaseCheck.spec, settings.health).timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            await database.ping()
    except Exception as exc:  # unreachable or hung: the database check says which
        log.error(
            "auto_migrate_skipped", reason="database not answering", error_type=type(exc).__name__
        )
        return False
    try:
        await migrate.upgrade(database.engine)
    except Exception as exc:  # reported by the database and schema checks
        inner = getattr(exc, "orig", None) or exc
        log.error("auto_migrate_failed", error_type=type(inner).__name__)
        return False
    return True


async def finish_start_up(
    settings: Settings,
    database: Database,
    monitor: HealthMonitor,
    *,
    migrated: bool,
    bootstrap: Callable[[], Awaitable[None]],
) -> None:
    """After a degraded start, retry what start-up could not do, at the database check's
    interval: the migrations (when ``auto_migrate`` is on) and then, once every critical
    dependency passes, the first admin."""
    interval = tuned(DatabaseCheck.spec, settings.health).interval_seconds
    while True:
        try:
            if not migrated and await migrate_if_possible(settings, database):
                migrated = True
                log.info("auto_migrate_completed")
                await monitor.refresh("schema")
            if monitor.ready:
                await bootstrap()
                return
        except Exception as exc:  # the database went away again: the next round retries
            log.warning("start_up_retry_failed", error_type=type(exc).__name__)
        await asyncio.sleep(interval)


async def start_health(settings: Settings, database: Database) -> HealthMonitor:
    """Validate once, log it, enforce the production rule, and return the monitor (started
    when ``settings.health.monitor`` is on)."""
    validator = DependencyValidator(settings, database)
    report = await validator.validate()
    fields = report.log_fields()
    if report.ready:
        log.info("dependency_validation", **fields)
    else:
        log.warning("dependency_validation", **fields)
    if not report.ready:
        production = settings.environment is Environment.production
        if production and not settings.health.start_degraded:
            summary = (
                "Renum cannot start: a critical dependency failed.\n"
                f"{report.summary()}\n"
                "Fix it and start again, or set RENUM_HEALTH__START_DEGRADED=true to start "
                "degraded (readiness answers 503 until it recovers)."
            )
            print(f"\n{summary}\n", file=sys.stderr, flush=True)
            raise StartupBlocked(summary)
        log.warning("starting_degraded", failing=[e.check for e in report.critical_failures()])
    monitor = HealthMonitor(validator, report)
    if settings.health.monitor:
        monitor.start()
    return monitor
