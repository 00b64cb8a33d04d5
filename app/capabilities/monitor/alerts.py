"""The alert loop: evaluates the rules over the monitor's figures, keeps the alerts and their
silences in the database, and sends notifications through the delivery service.

Every process runs the loop; each round:

* **One evaluator per deployment.** On PostgreSQL the process holding a session advisory lock
  (``pg_try_advisory_lock`` on a connection of its own, kept while the process lives: when it
  dies or loses its connection, the lock is free and the next round of another process takes
  it) evaluates; the others only read. SQLite serves one process (the ``sqlite-workers`` rule
  refuses more), which evaluates.
* **Evaluate** (the evaluator only): the alerts kept in the database are loaded into the pure
  ``Evaluator`` (``alerting``), which applies the rules (with the settings' overrides, read
  live each round) to an ``Observation`` of this process's monitor; the alerts that changed
  are written back, and each notification becomes, in the same transaction, a log line and one
  delivery per channel whose ``min_severity`` it reaches. The delivery service retries a
  failing channel with backoff in the background: nothing here waits for a channel, and no
  request ever does.
* **Refresh** (every process): the alerts, the silences and each channel's latest delivery
  are read into memory, for the dashboard's stream and ``GET /api/v1/ops/alerts``.

Capabilities report problems of their own through ``report`` and ``clear`` (the
``app.core.alerts.AlertReporter`` interface, ``app.state.alerts``): any process writes such an
alert at once, firing, under the rule ``reported:<source>``, with the same deduplication,
repeat interval, silences and channels; the evaluator leaves it firing until it is cleared.

Channels: ``webhook`` posts Renum's JSON (``alert_payload``, signed like tenant webhooks when
the channel has a secret), ``slack`` posts a Slack-compatible incoming-webhook body
(``slack_payload``), ``email`` sends a plain-text message through the SMTP settings
(``email_payload``). A channel's deliveries are of kind ``alert:<channel name>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app import __version__
from app.capabilities.monitor.alerting import (
    REPORTED,
    Alert,
    AlertSeverity,
    AlertState,
    CheckFigures,
    Evaluator,
    Notification,
    NotificationKind,
    Observation,
    ProviderFigures,
    RouteFigures,
    Silence,
    at_least,
    configured_rules,
    due,
    fingerprint,
)
from app.capabilities.monitor.monitor import AdvancedHealthMonitor
from app.core.alerts import LOG_LEVELS, LogAlertReporter, Severity
from app.core.config import AlertChannelSettings, AlertSettings, Settings
from app.core.logging import get_logger
from app.db.database import SQLAlchemyManager
from app.models import AlertRecord, AlertSilence
from app.repositories.alerts import AlertRepository, ChannelStatus, Evaluation
from app.services.delivery import DeliveryDispatcher, Destination

log = get_logger("app.alerts")

# The advisory lock's key: the first 8 bytes of a hash of its name, as a signed bigint.
EVALUATOR_LOCK = int.from_bytes(
    hashlib.sha256(b"renum:alert-evaluator").digest()[:8], "big", signed=True
)
KEEP_ENDED_SILENCES_SECONDS = 24 * 3600.0
LOCK_CHECK_SECONDS = 10.0
# What a reported problem may carry (``report``): its source names the rule ``reported:<source>``.
SOURCE = re.compile(r"^[a-z][a-z0-9_.-]{0,54}$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_LABELS = 8
MAX_LABEL_CHARS = 200
MAX_MESSAGE_CHARS = 2000
EVALUATOR = f"{socket.gethostname()}:{os.getpid()}"
RECENT_RESOLVED = 50
CHANNEL_KIND = "alert:{name}"


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _instant(seconds: float | None) -> datetime | None:
    return None if seconds is None else _at(seconds)


def _seconds(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def to_alert(record: AlertRecord) -> Alert:
    return Alert(
        fingerprint=record.fingerprint,
        rule=record.rule,
        severity=AlertSeverity(record.severity),
        labels=tuple(sorted(record.labels.items())),
        state=AlertState(record.state),
        started_at=record.started_at.timestamp(),
        value=record.value,
        message=record.message,
        diagnostics=tuple(record.diagnostics),
        fired_at=_seconds(record.fired_at),
        resolved_at=_seconds(record.resolved_at),
        notified_at=_seconds(record.notified_at),
        seen_at=_seconds(record.seen_at),
    )


def to_record(alert: Alert) -> AlertRecord:
    return AlertRecord(
        fingerprint=alert.fingerprint,
        rule=alert.rule,
        severity=alert.severity.value,
        labels=dict(alert.labels),
        state=alert.state.value,
        value=alert.value,
        message=alert.message,
        diagnostics=list(alert.diagnostics),
        started_at=_at(alert.started_at),
        fired_at=_instant(alert.fired_at),
        resolved_at=_instant(alert.resolved_at),
        notified_at=_instant(alert.notified_at),
        seen_at=_instant(alert.seen_at),
    )


def to_silence(row: AlertSilence) -> Silence:
    ends = row.expires_at if row.ended_at is None else min(row.expires_at, row.ended_at)
    return Silence(
        id=str(row.id),
        matchers=dict(row.matchers),
        reason=row.reason,
        author=row.author,
        starts_at=row.starts_at.timestamp(),
        expires_at=ends.timestamp(),
    )


Labels = tuple[tuple[str, str], ...]


def reported_labels(source: str, labels: Mapping[str, str] | None) -> Labels:
    """A reported problem's labels, sorted, each value a string of at most
    ``MAX_LABEL_CHARS``; ``ValueError`` for a malformed source or label name (``rule`` is
    taken: silences match on it)."""
    if not SOURCE.match(source):
        raise ValueError(f"an alert source matches {SOURCE.pattern}, not {source!r}")
    items = dict(labels or {})
    if len(items) > MAX_LABELS:
        raise ValueError(f"an alert has at most {MAX_LABELS} labels")
    for name in items:
        if not LABEL_NAME.match(name) or name == "rule":
            raise ValueError(f"an alert label name matches {LABEL_NAME.pattern}, not 'rule'")
    return tuple(sorted((name, str(value)[:MAX_LABEL_CHARS]) for name, value in items.items()))


def alert_out(alert: Alert) -> dict[str, Any]:
    """An alert as the API, the stream and the webhook channel show it."""
    return {
        "fingerprint": alert.fingerprint,
        "rule": alert.rule,
        "severity": alert.severity.value,
        "state": alert.state.value,
        "labels": dict(alert.labels),
        "value": alert.value,
        "message": alert.message,
        "diagnostics": list(alert.diagnostics),
        "started_at": _instant(alert.started_at),
        "fired_at": _instant(alert.fired_at),
        "resolved_at": _instant(alert.resolved_at),
        "notified_at": _instant(alert.notified_at),
        "seen_at": _instant(alert.seen_at),
    }


# -- channel payloads -----------------------------------------------------------------------------


def alert_payload(notification: Notification, environment: str) -> dict[str, Any]:
    """The ``webhook`` channel's JSON body."""
    body = alert_out(notification.alert)
    for key in ("started_at", "fired_at", "resolved_at", "notified_at", "seen_at"):
        value = body[key]
        body[key] = value.isoformat() if value is not None else None
    return {
        "type": f"alert.{notification.kind.value}",
        "alert": body,
        "source": {"service": "renum", "version": __version__, "environment": environment},
    }


def headline(notification: Notification) -> str:
    alert = notification.alert
    state = "RESOLVED" if notification.kind.value == "resolved" else "FIRING"
    return f"[{state}] {alert.severity.value}: {alert.rule}"


def slack_escape(text: str) -> str:
    """Slack's three control characters escaped, so that a route such as ``<unmatched>`` or a
    reported ``<!channel>`` is shown, never read as a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(notification: Notification, environment: str) -> dict[str, Any]:
    """The ``slack`` channel's body: Slack's incoming-webhook format (``text`` for
    notifications, ``blocks`` for the message), every text escaped."""
    alert = notification.alert
    lines = [slack_escape(line) for line in (alert.message, *alert.diagnostics)]
    return {
        "text": slack_escape(f"{headline(notification)} ({environment})"),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": headline(notification)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"renum {environment} · fingerprint {alert.fingerprint}",
                    }
                ],
            },
        ],
    }


def email_payload(notification: Notification, environment: str) -> dict[str, Any]:
    """The ``email`` channel's message: a subject and a plain-text body."""
    alert = notification.alert
    body = [
        alert.message,
        "",
        *(f"- {line}" for line in alert.diagnostics),
        "",
        f"Rule: {alert.rule}",
        f"Severity: {alert.severity.value}",
        f"Labels: {dict(alert.labels) or '-'}",
        f"Started: {_instant(alert.started_at)}",
        f"Fingerprint: {alert.fingerprint}",
        f"Environment: {environment}",
    ]
    return {"subject": f"{headline(notification)} ({environment})", "text": "\n".join(body)}


def destination(channel: AlertChannelSettings) -> Destination:
    if channel.type == "email":
        return Destination.operator("mailto:" + ",".join(quote(a, safe="@") for a in channel.to))
    url = channel.url.get_secret_value() if channel.url else ""  # required for these types
    return Destination.operator(url)


PAYLOADS: dict[str, Callable[[Notification, str], dict[str, Any]]] = {
    "webhook": alert_payload,
    "slack": slack_payload,
    "email": email_payload,
}


# -- one evaluator per deployment ----------------------------------------------------------------


class Leadership:
    """Whether this process is the deployment's evaluator (see the module's docstring)."""

    def __init__(self, database: SQLAlchemyManager) -> None:
        self.database = database
        self._connection: AsyncConnection | None = None

    async def hold(self) -> bool:
        """Keep or try to take the lock; whether this process holds it now. Each step is
        bounded by ``LOCK_CHECK_SECONDS``: a connection that does not answer in time is
        given up (and the lock with it)."""
        if self.database.settings.is_sqlite:
            return True
        if self._connection is not None:
            try:
                async with asyncio.timeout(LOCK_CHECK_SECONDS):
                    await self._connection.execute(text("SELECT 1"))
                return True
            except Exception as exc:  # the connection (and with it the lock) is gone
                log.warning("alert_evaluator_lost", error_type=type(exc).__name__)
                await self._drop()
        connection = await self.database.engine.connect()
        try:
            async with asyncio.timeout(LOCK_CHECK_SECONDS):
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                held = await connection.scalar(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": EVALUATOR_LOCK}
                )
        except BaseException:  # cancelled too: whether it took the lock is unknown
            await _discard(connection)
            raise
        if not held:
            await connection.close()
            return False
        self._connection = connection
        log.info("alert_evaluator_elected")
        return True

    async def release(self) -> None:
        if self._connection is None:
            return
        try:
            async with asyncio.timeout(LOCK_CHECK_SECONDS):
                await self._connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": EVALUATOR_LOCK}
                )
        except Exception:  # unknown whether it is still held: the connection is discarded
            await self._drop()
            return
        connection, self._connection = self._connection, None
        await connection.close()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await _discard(connection)


async def _discard(connection: AsyncConnection) -> None:
    """Close a connection that may still hold the lock without returning it to the pool
    (a pooled connection would keep the lock for whoever checks it out next)."""
    with contextlib.suppress(Exception):
        await connection.invalidate()
    with contextlib.suppress(Exception):
        await connection.close()


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class _Calls:
    at: float
    totals: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class AlertView:
    """What the process last read: for the stream and the API."""

    alerts: list[Alert] = field(default_factory=list)
    silences: list[AlertSilence] = field(default_factory=list)
    channels: dict[str, ChannelStatus] = field(default_factory=dict)
    refreshed_at: float | None = None
    evaluation: Evaluation | None = None


class AlertManager:
    """Runs the alert loop of one process (see the module's docstring)."""

    def __init__(
        self,
        *,
        database: SQLAlchemyManager,
        monitor: AdvancedHealthMonitor,
        dispatcher: DeliveryDispatcher,
        settings: Callable[[], Settings],
        checks: Callable[[], Sequence[CheckFigures]] = tuple,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.monitor = monitor
        self.dispatcher = dispatcher
        self.settings = settings
        self.checks = checks
        self.clock = clock
        self.leadership = Leadership(database)
        self.view = AlertView()
        self._calls: deque[_Calls] = deque()
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> AlertSettings:
        return self.settings().monitor.alerts

    # -- observing ------------------------------------------------------------------------------

    def observe(self) -> Observation:
        """What the rules judge now: every worker's routes over the monitor's window (their
        requests, 5xx answers and p95 in it), this process's latest system figures and their
        history, the dependency checks, and each model provider's calls over the window."""
        now = self.clock()
        routes = [
            RouteFigures(w.figures.method, w.figures.route, w.requests, w.errors, w.p95)
            for w in self.monitor.route_windows(service=True)
        ]
        latest = self.monitor.history.latest()
        system = {name: value for name, value in latest.items() if value is not None}

        def history(figure: str) -> list[tuple[float, float]]:
            return [(p.at, p.value) for p in self.monitor.series(figure)]

        return Observation(
            at=now,
            routes=routes,
            system=system,
            history=history,
            checks=list(self.checks()),
            providers=self._provider_window(now),
        )

    def _provider_window(self, now: float) -> list[ProviderFigures]:
        registry = self.monitor.metrics.service_registry()
        totals = self.monitor.executions.provider_totals(registry)
        interval = self.config.evaluation_interval_seconds
        if self._calls and now - self._calls[-1].at > 3 * interval:
            self._calls.clear()  # evaluated elsewhere meanwhile: start the window again
        self._calls.append(_Calls(now, totals))
        window = self.monitor.window_seconds
        while len(self._calls) > 2 and now - self._calls[1].at >= window:
            self._calls.popleft()
        first = self._calls[0].totals
        return [
            ProviderFigures(
                provider,
                calls - first.get(provider, (0.0, 0.0))[0],
                errors - first.get(provider, (0.0, 0.0))[1],
            )
            for provider, (calls, errors) in sorted(totals.items())
        ]

    # -- a round ----------------------------------------------------------------------------------

    async def round(self) -> list[Notification]:
        """One evaluation (when this process is the evaluator) and one refresh."""
        config = self.config
        sent: list[Notification] = []
        if config.enabled and await self.leadership.hold():
            sent = await self.evaluate(config)
        elif not config.enabled:
            await self.leadership.release()
        await self.refresh(config)
        return sent

    async def evaluate(self, config: AlertSettings) -> list[Notification]:
        observation = self.observe()
        evaluator = Evaluator(
            configured_rules(config.rules), repeat_seconds=config.repeat_interval_seconds
        )
        now = _at(observation.at)
        async with self.database.session() as session:
            repo = AlertRepository(session)
            before = {r.fingerprint: to_alert(r) for r in await repo.all()}
            evaluator.alerts = dict(before)
            silences = [to_silence(s) for s in await repo.silences(since=now)]
            sent = evaluator.evaluate(observation, silences)
            changed = [a for key, a in evaluator.alerts.items() if before.get(key) != a]
            await repo.save(to_record(alert) for alert in changed)
            await repo.forget(before.keys() - evaluator.alerts.keys())
            for notification in sent:
                self._log(notification)
                await self._enqueue(session, notification, config)
            await repo.evaluated(EVALUATOR, now)
            await repo.purge_silences(_at(observation.at - KEEP_ENDED_SILENCES_SECONDS))
            await session.commit()
        if sent:
            self.dispatcher.kick()
        return sent

    async def refresh(self, config: AlertSettings) -> None:
        now = self.clock()
        kinds = [CHANNEL_KIND.format(name=c.name) for c in config.channels]
        async with self.database.session() as session:
            repo = AlertRepository(session)
            alerts = [to_alert(r) for r in await repo.all()]
            silences = list(await repo.silences(since=_at(now - KEEP_ENDED_SILENCES_SECONDS)))
            channels = await repo.channel_status(kinds)
            evaluation = await repo.last_evaluation()
        self.view = AlertView(alerts, silences, channels, now, evaluation)

    def _log(self, notification: Notification) -> None:
        alert = notification.alert
        level = "info" if notification.kind.value == "resolved" else LOG_LEVELS[alert.severity]
        getattr(log, level)(
            f"alert_{notification.kind.value}",
            rule=alert.rule,
            severity=alert.severity.value,
            fingerprint=alert.fingerprint,
            labels=dict(alert.labels),
            alert_message=alert.message,
        )

    async def _enqueue(
        self, session: Any, notification: Notification, config: AlertSettings
    ) -> None:
        environment = self.settings().environment.value
        for channel in config.channels:
            if not at_least(notification.alert.severity, channel.min_severity):
                continue
            secret = channel.secret.get_secret_value() if channel.secret else None
            await self.dispatcher.enqueue(
                session,
                destination(channel),
                PAYLOADS[channel.type](notification, environment),
                event=f"alert.{notification.kind.value}",
                kind=CHANNEL_KIND.format(name=channel.name),
                secret=secret if channel.type == "webhook" else None,
            )

    # -- reported by capabilities --------------------------------------------------------------

    async def report(
        self,
        source: str,
        severity: Severity,
        message: str,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """A capability's problem is happening: fire it (or keep it firing: told again when
        its severity rises, else at most every repeat interval), unless a silence holds it.
        Never raises for want of the database: the report is then logged, as with the
        monitor off. A malformed ``source`` or label is the caller's bug (``ValueError``)."""
        keys = reported_labels(source, labels)
        text = message[:MAX_MESSAGE_CHARS]
        try:
            await self._report(source, AlertSeverity(severity), text, keys)
        except Exception as exc:
            log.error("alert_report_failed", source=source, error_type=type(exc).__name__)
            await LogAlertReporter().report(source, severity, text, labels=dict(keys))

    async def _report(
        self, source: str, severity: AlertSeverity, message: str, keys: Labels
    ) -> None:
        rule = REPORTED + source
        key = fingerprint(rule, keys)
        now = self.clock()
        config = self.config
        async with self.database.session() as session:
            repo = AlertRepository(session)
            await repo.lock(key)  # one report or clear of this alert at a time
            record = await repo.get(key)
            previous = to_alert(record) if record is not None else None
            kind: NotificationKind | None = NotificationKind.firing
            if previous is None or previous.state is AlertState.resolved:
                alert = Alert(
                    key, rule, severity, keys, AlertState.firing, now, 1.0, message,
                    fired_at=now, seen_at=now,
                )  # fmt: skip
            else:
                alert = replace(previous, severity=severity, message=message, seen_at=now)
                kind = due(previous, alert, now, config.repeat_interval_seconds)
            await self._settle(session, alert, kind, config)

    async def clear(self, source: str, *, labels: Mapping[str, str] | None = None) -> None:
        """A capability's problem is over: resolve its alert (notified once). Never raises
        for want of the database (logged instead)."""
        keys = reported_labels(source, labels)
        try:
            await self._clear(source, keys)
        except Exception as exc:
            log.error("alert_clear_failed", source=source, error_type=type(exc).__name__)
            await LogAlertReporter().clear(source, labels=dict(keys))

    async def _clear(self, source: str, keys: Labels) -> None:
        key = fingerprint(REPORTED + source, keys)
        now = self.clock()
        async with self.database.session() as session:
            repo = AlertRepository(session)
            await repo.lock(key)
            record = await repo.get(key)
            if record is None or record.state == AlertState.resolved.value:
                return
            alert = replace(to_alert(record), state=AlertState.resolved, resolved_at=now)
            await self._settle(session, alert, NotificationKind.resolved, self.config)

    async def _settle(
        self,
        session: Any,
        alert: Alert,
        kind: NotificationKind | None,
        config: AlertSettings,
    ) -> None:
        """Store the alert and send its notification (unless silenced), in one transaction."""
        repo = AlertRepository(session)
        now = self.clock()
        silenced = any(
            s.active(now) and s.matches(alert)
            for s in map(to_silence, await repo.silences(since=_at(now)))
        )
        notification = None
        if kind is not None and not silenced:
            alert = replace(alert, notified_at=now)
            notification = Notification(kind, alert)
        await repo.save([to_record(alert)])
        if notification is not None:
            self._log(notification)
            await self._enqueue(session, notification, config)
        await session.commit()
        if notification is not None:
            self.dispatcher.kick()

    # -- running ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:  # the database is away: the next round tries again
                if not self._failing:
                    log.warning("alert_round_failed", error_type=type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info("alert_round_recovered")
                self._failing = False
            await asyncio.sleep(self.config.evaluation_interval_seconds)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="renum-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.leadership.release()
