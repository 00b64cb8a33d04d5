"""The health capability: dependency validation at start-up, the check registry every capability
registers its checks with, the background monitor, the probes under ``/health/*`` and
``renum doctor``. Switched off with ``RENUM_HEALTH__ENABLED=false``: no validation, monitor or
probes (the base start-up still migrates and creates the first admin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.health import routes
from app.capabilities.health.checks import CheckContext
from app.capabilities.health.doctor import EXIT_CODES, diagnose, report_table
from app.capabilities.health.monitor import HealthMonitor
from app.capabilities.health.registry import (
    PROBES,
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Probe,
    Status,
    Troubleshooting,
    register,
    registered_checks,
)
from app.capabilities.health.startup import StartupBlocked, start_health
from app.capabilities.health.validator import DependencyValidator, ValidationReport
from app.core.config import Settings

__all__ = [
    "CAPABILITY",
    "EXIT_CODES",
    "PROBES",
    "CheckContext",
    "CheckOutcome",
    "CheckSpec",
    "DependencyValidator",
    "HealthCheck",
    "HealthMonitor",
    "Probe",
    "StartupBlocked",
    "Status",
    "Troubleshooting",
    "ValidationReport",
    "diagnose",
    "register",
    "registered_checks",
    "report_table",
]


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(routes.router)


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """Validate once, keep the monitor running, and re-read the schema as soon as a degraded
    start has applied its migrations."""
    monitor = await start_health(context.settings, context.database, context.app.state)
    context.app.state.health_monitor = monitor

    async def schema_changed() -> None:
        await monitor.refresh("schema")

    context.startup.on_migrated(schema_changed)
    try:
        yield
    finally:
        await monitor.stop()


CAPABILITY = Capability(
    name="health",
    summary="Dependency validation, the background monitor and the /health/* probes.",
    install=install,
    running=running,
)
