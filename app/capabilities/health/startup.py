"""Start-up of the health capability: validate every dependency once (after the base start-up
has migrated what it could), log the report as one structured event, stop a production start on
a failed critical dependency (unless ``RENUM_HEALTH__START_DEGRADED``), and hand the report to
the monitor."""

from __future__ import annotations

import sys

from starlette.datastructures import State

from app.capabilities.health.monitor import HealthMonitor
from app.capabilities.health.validator import DependencyValidator
from app.core.config import Environment, Settings
from app.core.logging import get_logger
from app.db.database import SQLAlchemyManager

log = get_logger("app.health")


class StartupBlocked(RuntimeError):
    """A critical dependency failed at start-up in production; the message says which and how
    to fix it."""


async def start_health(
    settings: Settings, database: SQLAlchemyManager, state: State | None = None
) -> HealthMonitor:
    """Validate once, log it, enforce the production rule, and return the monitor (started
    when ``settings.health.monitor`` is on). ``state`` is the app's, for checks that look at
    the capabilities running in it."""
    validator = DependencyValidator(settings, database, state=state)
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
    monitor = HealthMonitor(validator, report, getattr(state, "metrics", None))
    if settings.health.monitor:
        monitor.start()
    return monitor
