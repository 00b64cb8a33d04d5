"""Security events: each detection of the intrusion detection (and each rate limit reached),
told once when it starts, to the places an operator looks.

A ``SecurityEvent`` says what was detected (``kind``), about whom (``subject``: an account's
email, a source address, an email and a source, an account or API key id), from where
(``source``), the counts that crossed the threshold and the action taken (``throttled`` for
how long). ``SecurityEvents.emit`` counts it on ``/metrics``
(``renum_security_events_total{kind,action}``), logs it, reports it as an alert (source
``security``, one per ``kind``; the monitor's channels send it) and calls each
of ``listeners`` (plain async callables; the audit trail is one). One listener's failure
never keeps the event from the others."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter

from app.core.alerts import AlertReporter, Severity
from app.core.logging import get_logger
from app.core.metrics import Metrics

log = get_logger("app.security")

KINDS = (
    "brute-force",
    "credential-stuffing",
    "distributed-attack",
    "user-enumeration",
    "invalid-credentials",
    "id-probing",
    "rate-limit",
)


@dataclass(frozen=True)
class SecurityEvent:
    """One detection: what, about whom, from where, the counts, and what was done."""

    kind: str
    subject: str
    source: str
    counts: Mapping[str, int] = field(default_factory=dict)
    action: str = "throttled"
    seconds: int = 0  # how long the action lasts (0: not timed)

    def describe(self) -> str:
        counts = ", ".join(f"{name} {value}" for name, value in self.counts.items())
        lasting = f" for {self.seconds} s" if self.seconds else ""
        return (
            f"{self.kind} on {self.subject} from {self.source} ({counts}): {self.action}{lasting}"
        )


Listener = Callable[[SecurityEvent], Awaitable[None]]


class SecurityEvents:
    """Where security events go: the metric, the log, the alerts and the ``listeners``."""

    def __init__(self, metrics: Metrics, alerts: Callable[[], AlertReporter]) -> None:
        self.total = Counter(
            "renum_security_events_total",
            "Security events (attacks detected, rate limits reached) by kind and action.",
            ("kind", "action"),
            registry=metrics.shared,
        )
        self._alerts = alerts  # read at each event: the monitor may replace the reporter
        self.listeners: list[Listener] = []

    async def emit(self, event: SecurityEvent) -> None:
        self.total.labels(event.kind, event.action).inc()
        log.warning(
            "security_event",
            kind=event.kind,
            subject=event.subject,
            source=event.source,
            counts=dict(event.counts),
            action=event.action,
            seconds=event.seconds,
        )
        sinks: list[Listener] = [self._report, *self.listeners]
        for sink in sinks:
            try:
                await sink(event)
            except Exception as exc:  # one sink's fault never skips the others
                log.error(
                    "security_event_sink_failed",
                    sink=getattr(sink, "__qualname__", repr(sink)),
                    error_type=type(exc).__name__,
                )

    async def _report(self, event: SecurityEvent) -> None:
        severity: Severity = "info" if event.kind == "rate-limit" else "warning"
        await self._alerts().report(
            "security",
            severity,
            event.describe(),
            # One alert per kind (the latest detection in its message): attackers who rotate
            # subjects make no new alert each, and choose no label.
            labels={"kind": event.kind},
        )
