"""Problems capabilities report (``app.state.alerts``): with the monitor on, they join its
alerts in the database (fired once, deduplicated, held by silences, queued for every channel,
left firing by the evaluator until cleared, then resolved once); with it off, they are logged.
A running app on SQLite, its loops quiet (long intervals) so the test drives every step."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeSettings
from sqlalchemy import select
from structlog.testing import capture_logs

from app.capabilities.monitor.alerts import AlertManager
from app.core.alerts import LogAlertReporter
from app.core.config import DatabaseSettings, Settings
from app.db.base import utcnow
from app.db.database import SQLAlchemyManager
from app.main import create_app
from app.models import AlertRecord, AlertSilence, Delivery
from app.repositories.alerts import AlertRepository

pytestmark = pytest.mark.anyio

QUIET = {"interval_seconds": 3600, "alerts": {"evaluation_interval_seconds": 3600}}
CHANNEL = {"name": "pager", "type": "webhook", "url": "http://127.0.0.1:9/alerts"}
SOURCE = "backups"
LABELS = {"target": "postgresql"}


def quiet_settings(make_settings: MakeSettings, **monitor: Any) -> Settings:
    return make_settings(
        monitor={**QUIET, **monitor, "alerts": {**QUIET["alerts"], "channels": [CHANNEL]}},
        deliveries={"enabled": False},  # queued only: the test reads what was queued
        health={"interval_seconds": 3600, "ttl_seconds": 7200},
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},  # no lookup off the machine
    )


async def rows(manager: AlertManager) -> tuple[list[AlertRecord], list[Delivery]]:
    async with manager.database.session() as session:
        alerts = list((await session.scalars(select(AlertRecord))).all())
        queued = list((await session.scalars(select(Delivery).order_by(Delivery.created_at))).all())
    return alerts, queued


async def test_a_reported_problem_fires_once_stays_until_cleared_and_resolves_once(
    make_settings: MakeSettings,
) -> None:
    app = create_app(quiet_settings(make_settings))
    async with app.router.lifespan_context(app):
        manager: AlertManager = app.state.alert_manager
        assert app.state.alerts is manager

        with capture_logs() as logs:
            await app.state.alerts.report(
                SOURCE, "critical", "nightly backup failed", labels=LABELS
            )
        alerts, queued = await rows(manager)
        assert [(a.rule, a.state, a.labels) for a in alerts] == [
            ("reported:backups", "firing", LABELS)
        ]
        assert [(d.kind, d.event) for d in queued] == [("alert:pager", "alert.firing")]
        assert queued[0].payload["alert"]["message"] == "nightly backup failed"
        assert [e["event"] for e in logs if e["event"].startswith("alert_")] == ["alert_firing"]
        assert next(e for e in logs if e["event"] == "alert_firing")["log_level"] == "error"

        # Reported again within the repeat interval: one alert, nothing more sent.
        await app.state.alerts.report(SOURCE, "critical", "still failing", labels=LABELS)
        alerts, queued = await rows(manager)
        assert len(alerts) == 1
        assert alerts[0].message == "still failing"
        assert len(queued) == 1

        # The evaluator's rounds leave it firing: only its source clears it.
        await manager.round()
        await manager.round()
        alerts, _ = await rows(manager)
        assert alerts[0].state == "firing"

        await app.state.alerts.clear(SOURCE, labels=LABELS)
        await app.state.alerts.clear(SOURCE, labels=LABELS)  # twice: said once
        alerts, queued = await rows(manager)
        assert alerts[0].state == "resolved"
        assert [d.event for d in queued] == ["alert.firing", "alert.resolved"]


async def test_a_silence_holds_a_reported_problem_back(make_settings: MakeSettings) -> None:
    app = create_app(quiet_settings(make_settings))
    async with app.router.lifespan_context(app):
        manager: AlertManager = app.state.alert_manager
        now = utcnow()
        async with manager.database.session() as session:
            session.add(
                AlertSilence(
                    matchers={"rule": "reported:backups"},
                    reason="restore drill",
                    author="root@example.com",
                    starts_at=now - timedelta(minutes=1),
                    expires_at=now + timedelta(hours=1),
                )
            )
            await session.commit()
        await app.state.alerts.report(SOURCE, "warning", "backup late", labels=LABELS)
        alerts, queued = await rows(manager)
        assert [a.state for a in alerts] == ["firing"]
        assert alerts[0].notified_at is None
        assert queued == []


async def test_with_the_monitor_off_reports_are_logged(make_settings: MakeSettings) -> None:
    app = create_app(
        make_settings(
            monitor={"enabled": False}, providers={"openai_base_url": "http://127.0.0.1:9/v1"}
        )
    )
    async with app.router.lifespan_context(app):
        reporter = app.state.alerts
        assert isinstance(reporter, LogAlertReporter)
        with capture_logs() as logs:
            await reporter.report(SOURCE, "warning", "backup late", labels=LABELS)
            await reporter.clear(SOURCE, labels=LABELS)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("alert_reported", "warning"),
        ("alert_cleared", "info"),
    ]
    assert logs[0]["labels"] == LABELS
    assert logs[0]["alert_message"] == "backup late"


async def test_a_rising_severity_is_told_at_once(make_settings: MakeSettings) -> None:
    app = create_app(quiet_settings(make_settings))
    async with app.router.lifespan_context(app):
        manager: AlertManager = app.state.alert_manager
        await app.state.alerts.report(SOURCE, "warning", "backup late", labels=LABELS)
        await app.state.alerts.report(SOURCE, "warning", "backup later", labels=LABELS)
        await app.state.alerts.report(SOURCE, "critical", "backup failed", labels=LABELS)
        _, queued = await rows(manager)
        told = [(d.event, d.payload["alert"]["severity"]) for d in queued]
        assert told == [("alert.firing", "warning"), ("alert.firing", "critical")]


async def test_the_evaluator_never_forgets_a_reported_alert_fired_again(
    make_settings: MakeSettings,
) -> None:
    """The evaluator drops resolved alerts past their day; one reported again meanwhile (by
    another process, between the evaluator's read and its delete) stays."""
    app = create_app(quiet_settings(make_settings))
    async with app.router.lifespan_context(app):
        manager: AlertManager = app.state.alert_manager
        await app.state.alerts.report(SOURCE, "warning", "backup late", labels=LABELS)
        alerts, _ = await rows(manager)
        async with manager.database.session() as session:
            await AlertRepository(session).forget([alerts[0].fingerprint])
            await session.commit()
        assert [a.state for a in (await rows(manager))[0]] == ["firing"]
        await app.state.alerts.clear(SOURCE, labels=LABELS)
        async with manager.database.session() as session:
            await AlertRepository(session).forget([alerts[0].fingerprint])
            await session.commit()
        assert (await rows(manager))[0] == []


async def test_without_its_database_a_report_is_logged_not_raised(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    app = create_app(quiet_settings(make_settings))
    async with app.router.lifespan_context(app):
        manager: AlertManager = app.state.alert_manager
        await manager.stop()  # its loop's first round would fail too, and log so
        away = SQLAlchemyManager(
            DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/missing/x.db")
        )
        manager.database = away
        try:
            with capture_logs() as logs:
                await app.state.alerts.report(SOURCE, "critical", "backup failed", labels=LABELS)
                await app.state.alerts.clear(SOURCE, labels=LABELS)
        finally:
            await away.dispose()
        with pytest.raises(ValueError, match="alert source"):
            await app.state.alerts.report("Not A Source", "warning", "x")
    # The alert events only: the app's background work (the rollup folder's first round, say)
    # may log meanwhile, a slow query on a busy machine.
    events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("alert_")]
    assert events == [
        ("alert_report_failed", "error"),
        ("alert_reported", "error"),
        ("alert_clear_failed", "error"),
        ("alert_cleared", "info"),
    ]
