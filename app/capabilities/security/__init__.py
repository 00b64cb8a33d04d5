"""The security manager (issue 17): the security headers, intrusion detection and throttling
with request rate limits (``throttle``, ``throttling``, ``counters``, ``events``), the rotation of
the keys that seal stored secrets (``keys``: ``renum keys status``, ``renum keys rotate``),
the offline vulnerability scanner and the SBOM, the audit trail, and which accounts'
executions have their content sealed at rest (``security.content_encryption.accounts``: the
policy of the base's ``app.services.content``, which opens sealed content with or without
this capability).

The audit trail (``security.audit.enabled``) is recorded by the services into
``app.state.audit`` (``app.services.audit``); this capability enables it, serves it at
``/api/v1/audit`` (``audit_routes``), writes its signed checkpoints and prunes it, and audits
platform admins' reads (``audit``).

Every answer carries the security headers (``headers``: ``nosniff``, the referrer policy, a
Content-Security-Policy for answers that set none, HSTS where configured), added by the base
middleware from ``app.state.response_headers``.

The scanner (``scanner``) checks the installed Python distributions against an OSV advisory
database on disk (``advisories``: the published ``PyPI/all.zip`` export, or the directory it
was unpacked into), which operators refresh; the code never downloads anything, so the machine
running Renum needs no internet. Each finding names the advisory and its aliases (CVE, GHSA,
PYSEC), the severity, the fixed version and the upgrade command. ``renum security scan``
prints it (exit 0 nothing known, 1 vulnerabilities found, 2 could not check), and
``renum security sbom`` prints a CycloneDX SBOM of the environment (``sbom``).

Intrusion detection and throttling (``throttle``, ``throttling``, ``middleware``, ``counters``,
``events``; ``security.throttle``): brute force, credential stuffing, distributed attacks on one
account, user enumeration, floods of invalid credentials and probing of ids are detected per
source address (``X-Forwarded-For`` behind the trusted proxies only) and per account, on
counters every API process shares (Redis, or the database), and answered with 429,
``Retry-After`` and growing delays, while a user keeps access from where they logged in
before; requests are rate limited per account and per API key (token buckets, the
``RateLimit`` headers). Each detection is a security event: on ``/metrics``, an alert, and told
to ``app.state.throttling.events.listeners``.

In the server, the ``SecurityManager`` (``manager``) holds the capability's parts: with
``security.scanner.enabled`` (on in the staging and production profiles) the scanner runs at
start-up and every ``interval_hours``, its result is the optional ``vulnerabilities`` check of
the dependency report (``checks``), and the findings per severity and the database's age are
on ``/metrics``. Switched off with ``RENUM_SECURITY__ENABLED=false``: nothing runs in the
server, and ``renum security`` still works."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.security import audit_routes
from app.capabilities.security.advisories import (
    Advisory,
    DatabaseError,
    Severity,
    parse_advisory,
    read_database,
)
from app.capabilities.security.audit import AuditKeeper
from app.capabilities.security.events import SecurityEvent, SecurityEvents
from app.capabilities.security.headers import security_headers
from app.capabilities.security.manager import CHECK_NAME, SecurityManager
from app.capabilities.security.sbom import SPEC_VERSION, sbom_json
from app.capabilities.security.scanner import (
    Finding,
    Installed,
    ScanResult,
    Verdict,
    VulnerabilityScanner,
    installed_distributions,
    reaches,
    scan,
    upgrade_command,
)
from app.capabilities.security.throttling import Throttling, install_throttling
from app.core.config import Settings
from app.services.audit_chain import AuditSigner
from app.services.content import NOTHING, SealingPolicy

__all__ = [
    "CAPABILITY",
    "SPEC_VERSION",
    "Advisory",
    "DatabaseError",
    "Finding",
    "Installed",
    "ScanResult",
    "SecurityEvent",
    "SecurityEvents",
    "SecurityManager",
    "Severity",
    "Throttling",
    "Verdict",
    "VulnerabilityScanner",
    "installed_distributions",
    "parse_advisory",
    "reaches",
    "read_database",
    "sbom_json",
    "scan",
    "security_headers",
    "upgrade_command",
]


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """The security manager's parts for the app's lifespan, kept in ``app.state.security``;
    the enabled audit trail in ``app.state.audit``."""
    app = context.app

    async def refresh_report() -> None:
        """A new scan shows in the dependency report at once, not at the check's next
        round (the health capability's monitor, when it runs)."""
        monitor = getattr(app.state, "health_monitor", None)
        if monitor is not None:
            await monitor.refresh(CHECK_NAME)

    manager = SecurityManager(
        context.settings.security,
        app.state.metrics,
        refresh_report,
        alerts=lambda: app.state.alerts,  # the monitor's alert manager when it is on
    )
    app.state.security = manager
    keeper: AuditKeeper | None = app.state.audit_keeper
    throttling: Throttling | None = getattr(app.state, "throttling", None)
    # Which accounts' new executions are sealed at rest; the base opens sealed content
    # whatever this says (off, nothing new is sealed and everything stored still reads).
    content = context.runtime.content
    content.policy = SealingPolicy.from_settings(context.settings.security.content_encryption)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(setattr, content, "policy", NOTHING)
        if keeper is not None:
            keeper.attach(context.database, AuditSigner.from_settings(context.settings))
            app.state.audit = keeper.trail
            keeper.start()
            stack.push_async_callback(keeper.stop)
        if throttling is not None:
            if keeper is not None:
                throttling.events.listeners.append(keeper.security_event)
                keeper.trail.address = app.state.request_screen.address  # trusted proxies
            await stack.enter_async_context(throttling.running(context.settings, context.database))
        manager.start()
        try:
            yield
        finally:
            await manager.stop()


def install(app: FastAPI, settings: Settings) -> None:
    """The security headers, added by the base middleware to every answer; the throttling's
    middleware and rate limits when ``security.throttle.enabled``; the audit trail's routes
    and its observer of admins' reads when ``security.audit.enabled``."""
    app.state.response_headers.extend(security_headers(settings.security.headers))
    if settings.security.throttle.enabled:
        install_throttling(app, settings)
    app.state.audit_keeper = None
    if settings.security.audit.enabled:
        keeper = AuditKeeper(settings.security.audit, app.state.metrics)
        app.state.audit_keeper = keeper
        app.state.request_observers.append(keeper)
        app.state.problem_observers.append(keeper.problem)
        app.include_router(audit_routes.router)


CAPABILITY = Capability(
    name="security",
    summary="The security manager: the security headers on every answer, intrusion detection "
    "and throttling with request rate limits, the offline vulnerability scanner of the "
    "installed packages (OSV database on disk), the SBOM, the audit trail, and executions' "
    "content sealed at rest for the accounts listed.",
    install=install,
    running=running,
)
