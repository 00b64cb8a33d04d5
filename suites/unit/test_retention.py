"""The retention purge's parts on their own: the cut-offs from the settings, the days a usage
period counts of the daily totals, folding ledger rows into daily totals (ids, UTC days, exact
sums), the report, and, on a small SQLite database, the background loop (a round every
interval, never raising: an unreachable database skips it, a missing schema is logged), the
purged-rows counter on /metrics, and a batch run again after a deadlock (only after a
transient error)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from structlog.testing import capture_logs

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.capabilities.database_manager.retention import (
    KINDS,
    PurgeReport,
    Retention,
    cutoffs,
)
from app.core.config import DatabaseSettings, RetentionSettings
from app.core.metrics import Metrics
from app.db import migrate
from app.db.base import Base
from app.db.database import build_engine
from app.models.ledger_total import total_id
from app.repositories.retention import Batch, fold

NOW = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)
CLOSED = "postgresql+asyncpg://renum@127.0.0.1:9/renum"  # loopback; nothing listens on 9


# -- cut-offs -----------------------------------------------------------------------------------


def test_no_retention_configured_means_nothing_to_purge() -> None:
    assert cutoffs(RetentionSettings(), NOW) == {}
    report = PurgeReport.planned(RetentionSettings(), NOW, dry_run=True)
    assert report.as_dict()["configured"] is False
    assert report.total == 0


def test_cutoffs_follow_the_settings_in_purge_order() -> None:
    settings = RetentionSettings(steps_days=30, events_days=7, rollups_days=400, ledger_days=90)
    found = cutoffs(settings, NOW)
    assert list(found) == ["rollups", "ledger", "events", "steps"]
    assert [kind for kind in KINDS if kind in found] == list(found)
    assert found["events"].before == NOW - timedelta(days=7)
    assert (found["steps"].days, found["steps"].kind) == (30, "steps")
    assert found["rollups"].day == date(2025, 10, 30)  # the first day kept


def test_every_kind_has_its_setting() -> None:
    fields = set(RetentionSettings.model_fields)
    assert {f"{kind}_days" for kind in KINDS} <= fields


# -- folding ------------------------------------------------------------------------------------


def row(created_at: datetime, **fields: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "account_id": ACCOUNT,
        "team_id": TEAM,
        "agent_id": None,
        "user_id": None,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "paid_by": "platform",
        "input_tokens": 10,
        "output_tokens": 2,
        "cost_usd": Decimal("0.00000001"),
        "duration_ms": 1,
        "created_at": created_at,
        **fields,
    }
    return SimpleNamespace(**values)


ACCOUNT = uuid.UUID("00000000-0000-4000-8000-000000000001")
TEAM = uuid.UUID("00000000-0000-4000-8000-000000000002")


def test_total_ids_are_stable_and_tell_keys_apart() -> None:
    key = (ACCOUNT, date(2026, 1, 2), TEAM, None, None, "openai", "gpt-4o", "platform")
    assert total_id(*key) == total_id(*key)
    # Stored ids: the derivation must never change between releases.
    assert total_id(*key) == uuid.UUID("4a25b7de-e190-5a0d-9304-c05594ba39fd")
    others = [
        (ACCOUNT, date(2026, 1, 3), TEAM, None, None, "openai", "gpt-4o", "platform"),
        (ACCOUNT, date(2026, 1, 2), None, TEAM, None, "openai", "gpt-4o", "platform"),
        (ACCOUNT, date(2026, 1, 2), TEAM, None, None, "openai", "gpt-4o", "user"),
        (TEAM, date(2026, 1, 2), TEAM, None, None, "openai", "gpt-4o", "platform"),
    ]
    assert len({total_id(*other) for other in [key, *others]}) == 5


def test_fold_sums_per_key_and_utc_day_exactly() -> None:
    day = datetime(2026, 3, 1, tzinfo=UTC)
    late = timezone(timedelta(hours=-5))
    rows = [
        row(day + timedelta(hours=1), cost_usd=Decimal("0.10000001")),
        row(day + timedelta(hours=23), cost_usd=Decimal("0.20000002"), input_tokens=5),
        row(day + timedelta(hours=12), cost_usd=Decimal("0.00000007"), output_tokens=0),
        # 21:00 on 1 March at UTC-5 is 02:00 UTC on the 2nd: another day.
        row(datetime(2026, 3, 1, 21, tzinfo=late), cost_usd=Decimal("1")),
        row(day, model="gpt-4o", cost_usd=Decimal("0.3")),
        row(day, user_id=TEAM, cost_usd=Decimal("0.3")),
    ]
    totals = fold(rows)
    assert [t.id for t in totals] == sorted(t.id for t in totals)
    by_key = {(t.day, t.model, t.user_id): t for t in totals}
    first = by_key[(date(2026, 3, 1), "gpt-4o-mini", None)]
    assert (first.calls, first.input_tokens, first.output_tokens) == (3, 25, 4)
    assert first.cost_usd == Decimal("0.30000010")
    assert by_key[(date(2026, 3, 2), "gpt-4o-mini", None)].cost_usd == Decimal("1")
    assert by_key[(date(2026, 3, 1), "gpt-4o", None)].calls == 1
    assert by_key[(date(2026, 3, 1), "gpt-4o-mini", TEAM)].calls == 1
    assert sum(t.calls for t in totals) == len(rows)
    assert first.values()["id"] == first.id
    assert fold([]) == []


# -- retried batches ------------------------------------------------------------------------------


class DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def dbapi_error(message: str, sqlstate: str | None = None) -> DBAPIError:
    return DBAPIError("DELETE ...", None, DriverError(message, sqlstate))


# -- on a database ------------------------------------------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    made = build_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"))
    await migrate.upgrade(made)
    try:
        yield made
    finally:
        await made.dispose()


async def add_ended_execution(engine: AsyncEngine, events: int, ended_days_ago: int) -> None:
    tables = Base.metadata.tables
    account, team, execution = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ended = datetime.now(UTC) - timedelta(days=ended_days_ago)
    async with engine.begin() as conn:
        await conn.execute(
            tables["accounts"].insert(), {"id": account, "name": "a", "name_key": account.hex}
        )
        await conn.execute(
            tables["teams"].insert(), {"id": team, "account_id": account, "name": "t"}
        )
        await conn.execute(
            tables["executions"].insert(),
            {
                "id": execution,
                "account_id": account,
                "team_id": team,
                "workflow_version": 1,
                "workflow": {},
                "prompt": "p",
                "status": "completed",
                "finished_at": ended,
            },
        )
        await conn.execute(
            tables["execution_events"].insert(),
            [{"execution_id": execution, "seq": n + 1, "type": "t"} for n in range(events)],
        )


@pytest.mark.anyio
async def test_a_round_without_retention_touches_nothing() -> None:
    engine = build_engine(DatabaseSettings(url=CLOSED))
    try:
        purger = Retention(engine, RetentionSettings)
        with capture_logs() as logs:
            assert await purger.round() is None
        assert logs == []
        assert purger.rounds == 0
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_an_unreachable_database_skips_the_round() -> None:
    engine = build_engine(DatabaseSettings(url=CLOSED))
    try:
        purger = Retention(engine, lambda: RetentionSettings(events_days=1))
        with capture_logs() as logs:
            assert await purger.round() is None
        assert [(e["event"], e["log_level"], e["reason"]) for e in logs] == [
            ("retention_skipped", "warning", "database unavailable")
        ]
        assert purger.rounds == 1
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_any_other_failure_is_logged_and_the_round_ends(tmp_path: Path) -> None:
    engine = build_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"))
    try:
        purger = Retention(engine, lambda: RetentionSettings(ledger_days=1))
        with capture_logs() as logs:
            assert await purger.round() is None
        assert [e["event"] for e in logs] == ["retention_failed"]
        assert "no such table" in logs[0]["reason"]
        assert logs[0]["removed"] == {"ledger": 0}
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_a_round_logs_its_report_and_counts_on_metrics(engine: AsyncEngine) -> None:
    await add_ended_execution(engine, events=3, ended_days_ago=5)
    metrics = Metrics("test", "test")
    purger = Retention(
        engine, lambda: RetentionSettings(events_days=2, ledger_days=2, batch_size=2), metrics
    )
    exposition = metrics.exposition().decode()
    assert 'renum_database_purged_rows_total{kind="steps"} 0.0' in exposition
    with capture_logs() as logs:
        report = await purger.round()
    assert report is not None
    assert report is purger.last_report
    (line,) = logs
    assert line["event"] == "retention_purged"
    assert line["removed"] == {"ledger": 0, "events": 3}
    assert line["batches"] == {"ledger": 0, "events": 2}
    assert line["oldest_kept"] == {}
    assert line["total"] == 3
    exposition = metrics.exposition().decode()
    assert 'renum_database_purged_rows_total{kind="events"} 3.0' in exposition
    assert 'renum_database_purged_rows_total{kind="ledger"} 0.0' in exposition
    as_dict = report.as_dict()
    assert as_dict["kinds"][1] == {
        "kind": "events",
        "days": 2,
        "cutoff": (report.now - timedelta(days=2)).isoformat(),
        "removed": 3,
        "batches": 2,
        "oldest_kept": None,
    }


@pytest.mark.anyio
async def test_the_loop_runs_rounds_until_stopped(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_ended_execution(engine, events=2, ended_days_ago=5)
    settings = RetentionSettings(events_days=1, interval_seconds=0.05)
    purger = Retention(engine, lambda: settings)
    three = asyncio.Event()
    one_round = purger.round

    async def counted() -> PurgeReport | None:
        report = await one_round()
        if purger.rounds >= 3:
            three.set()
        return report

    monkeypatch.setattr(purger, "round", counted)
    purger.start()
    purger.start()  # already running: one loop
    try:
        async with asyncio.timeout(10):
            await three.wait()
    finally:
        await purger.stop()
    await purger.stop()  # stopped already: nothing to do
    rounds = purger.rounds
    assert purger.last_report is not None
    await asyncio.sleep(0.2)
    assert purger.rounds == rounds  # stopped for good


@pytest.mark.anyio
async def test_a_batch_that_lost_a_race_runs_again(engine: AsyncEngine) -> None:
    purger = Retention(engine, lambda: RetentionSettings(events_days=1), retries=2)
    calls: list[int] = []

    async def work(conn: AsyncConnection) -> Batch:
        calls.append(1)
        if len(calls) < 3:
            raise dbapi_error("deadlock detected", "40P01")
        return Batch(1, 1)

    assert await purger._write(work) == Batch(1, 1)
    assert len(calls) == 3

    calls.clear()
    purger.retries = 1
    with pytest.raises(DBAPIError):
        await purger._write(work)
    assert len(calls) == 2

    async def refused(conn: AsyncConnection) -> Batch:
        calls.append(1)
        raise dbapi_error("permission denied", "42501")

    calls.clear()
    with pytest.raises(DBAPIError):
        await purger._write(refused)
    assert len(calls) == 1  # not transient: not retried
