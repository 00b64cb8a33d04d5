"""Where any part of Renum reports a problem an operator must hear about.

A capability that detects something worth an alert (a backup that failed, an attack under
way) calls ``app.state.alerts.report(source, severity, message, labels=...)`` while the
problem lasts and ``clear(source, labels=...)`` once it is over. Which reporter answers depends
on the monitor: with the monitor capability on, its ``AlertManager`` stores the alert with the
others (deduplicated by fingerprint, repeated at most every repeat interval, held back by
silences, sent to the alert channels, listed by ``GET /api/v1/ops/alerts``); with it off,
``LogAlertReporter`` writes it to the log, which is the fallback the monitor's switch leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from app.core.logging import get_logger

log = get_logger("app.alerts")

Severity = Literal["info", "warning", "critical"]
LOG_LEVELS: dict[str, str] = {"info": "info", "warning": "warning", "critical": "error"}


class AlertReporter(Protocol):
    async def report(
        self,
        source: str,
        severity: Severity,
        message: str,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """The problem ``source`` names (with ``labels``) is happening now."""

    async def clear(self, source: str, *, labels: Mapping[str, str] | None = None) -> None:
        """The problem is over."""


class LogAlertReporter:
    """The fallback: every report and clearance is a log line (``alert_reported`` at the
    severity's level, ``alert_cleared``)."""

    async def report(
        self,
        source: str,
        severity: Severity,
        message: str,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        getattr(log, LOG_LEVELS[severity])(
            "alert_reported",
            source=source,
            severity=severity,
            labels=dict(labels or {}),
            alert_message=message,
        )

    async def clear(self, source: str, *, labels: Mapping[str, str] | None = None) -> None:
        log.info("alert_cleared", source=source, labels=dict(labels or {}))
