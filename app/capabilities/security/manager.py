"""``SecurityManager``: the security capability's parts in a running server, held in one place.

Issue 17's security manager is built in slices; this one brings the offline vulnerability
scanner. The manager is what the capability keeps in ``app.state.security``, what the
dependency check reads, and what later slices add their parts to, so each part is started,
stopped and found the same way instead of through an attribute of its own on the app's state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.capabilities.security.scanner import VulnerabilityScanner
from app.core.alerts import AlertReporter
from app.core.config import SecuritySettings
from app.core.metrics import Metrics

# The scanner's entry in the dependency report (``checks``), which the capability refreshes
# after each scan.
CHECK_NAME = "vulnerabilities"


class SecurityManager:
    """The parts the settings switch on: ``scanner`` (``None`` when
    ``security.scanner.enabled`` is off)."""

    def __init__(
        self,
        settings: SecuritySettings,
        metrics: Metrics,
        on_scan: Callable[[], Awaitable[None]] | None = None,
        alerts: Callable[[], AlertReporter] | None = None,
    ) -> None:
        self.settings = settings
        self.scanner: VulnerabilityScanner | None = None
        if settings.scanner.enabled:
            self.scanner = VulnerabilityScanner(settings.scanner, metrics, on_scan, alerts)

    def start(self) -> None:
        """Start the background parts (the scanner's first scan runs at once)."""
        if self.scanner is not None:
            self.scanner.start()

    async def stop(self) -> None:
        if self.scanner is not None:
            await self.scanner.stop()
