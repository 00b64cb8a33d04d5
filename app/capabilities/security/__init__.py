"""The security manager (issue 17), built in slices: the security headers, the rotation of
the keys that seal stored secrets (``keys``: ``renum keys status``, ``renum keys rotate``),
the offline vulnerability scanner and the SBOM, and which accounts' executions have their
content sealed at rest (``security.content_encryption.accounts``: the policy of the base's
``app.services.content``, which opens sealed content with or without this capability).

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

In the server, the ``SecurityManager`` (``manager``) holds the capability's parts: with
``security.scanner.enabled`` (on in the staging and production profiles) the scanner runs at
start-up and every ``interval_hours``, its result is the optional ``vulnerabilities`` check of
the dependency report (``checks``), and the findings per severity and the database's age are
on ``/metrics``. Switched off with ``RENUM_SECURITY__ENABLED=false``: nothing runs in the
server, and ``renum security`` still works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.security.advisories import (
    Advisory,
    DatabaseError,
    Severity,
    parse_advisory,
    read_database,
)
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
from app.core.config import Settings
from app.services.content import NOTHING, SealingPolicy

__all__ = [
    "CAPABILITY",
    "SPEC_VERSION",
    "Advisory",
    "DatabaseError",
    "Finding",
    "Installed",
    "ScanResult",
    "SecurityManager",
    "Severity",
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
    """The security manager's parts for the app's lifespan, kept in ``app.state.security``."""
    app = context.app

    async def refresh_report() -> None:
        """A new scan shows in the dependency report at once, not at the check's next
        round (the health capability's monitor, when it runs)."""
        monitor = getattr(app.state, "health_monitor", None)
        if monitor is not None:
            await monitor.refresh(CHECK_NAME)

    manager = SecurityManager(context.settings.security, app.state.metrics, refresh_report)
    app.state.security = manager
    # Which accounts' new executions are sealed at rest; the base opens sealed content
    # whatever this says (off, nothing new is sealed and everything stored still reads).
    content = context.runtime.content
    content.policy = SealingPolicy.from_settings(context.settings.security.content_encryption)
    manager.start()
    try:
        yield
    finally:
        content.policy = NOTHING
        await manager.stop()


def install(app: FastAPI, settings: Settings) -> None:
    """The security headers, added by the base middleware to every answer."""
    app.state.response_headers.extend(security_headers(settings.security.headers))


CAPABILITY = Capability(
    name="security",
    summary="The security manager: the security headers on every answer, the offline "
    "vulnerability scanner of the installed packages (OSV database on disk), the SBOM, and "
    "executions' content sealed at rest for the accounts listed.",
    install=install,
    running=running,
)
