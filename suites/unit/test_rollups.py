"""The rollups' pure parts: which hours of a period are read from the rollups and which from
the ledger's rows (``app.repositories.ledger.hour_window``), the buckets a call and an
execution land in, and how contributions sum before their upserts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, text
from structlog.testing import capture_logs

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.capabilities.analytics.figures import Period
from app.core.config import DatabaseSettings, RollupSettings
from app.db import migrate
from app.db.base import Base
from app.db.database import SQLAlchemyManager, build_engine
from app.models.rollup import Grain, rollup_id
from app.repositories import rollups
from app.repositories.ledger import hour_start_from, hour_window
from app.services.rollups import Folded, RollupFolder
from qa.polling import wait_until_async

ACCOUNT = uuid.UUID(int=1)
TEN = datetime(2026, 11, 2, 10, tzinfo=UTC)


def test_a_period_splits_into_whole_hours_and_partial_ends() -> None:
    quarter = timedelta(minutes=15)
    assert hour_window(None, None) == ((None, None), [])
    assert hour_window(TEN, TEN + timedelta(hours=3)) == ((TEN, TEN + timedelta(hours=3)), [])
    whole, edges = hour_window(TEN + quarter, TEN + timedelta(hours=2) + quarter)
    assert whole == (TEN + timedelta(hours=1), TEN + timedelta(hours=2))
    assert edges == [
        (TEN + quarter, TEN + timedelta(hours=1)),
        (TEN + timedelta(hours=2), TEN + timedelta(hours=2) + quarter),
    ]
    # Open at either end: whole hours to the end (or from the beginning), one partial hour.
    assert hour_window(TEN + quarter, None) == (
        (TEN + timedelta(hours=1), None),
        [(TEN + quarter, TEN + timedelta(hours=1))],
    )
    assert hour_window(None, TEN + quarter) == ((None, TEN), [(TEN, TEN + quarter)])


def test_a_period_inside_one_hour_is_read_from_the_ledger_alone() -> None:
    since, until = TEN + timedelta(minutes=5), TEN + timedelta(minutes=50)
    assert hour_window(since, until) == (None, [(since, until)])
    # Up to the next hour's start: no whole hour, one partial one.
    whole, edges = hour_window(since, TEN + timedelta(hours=1))
    assert edges == [(since, TEN + timedelta(hours=1))]
    assert whole == (TEN + timedelta(hours=1), TEN + timedelta(hours=1))  # empty
    # An empty period on the hour holds nothing.
    assert hour_window(TEN, TEN) == ((TEN, TEN), [])


def test_hours_are_utc_hours() -> None:
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 2, 11, 0, tzinfo=paris)  # 10:00 UTC
    assert hour_start_from(local) == TEN
    assert hour_start_from(TEN + timedelta(microseconds=1)) == TEN + timedelta(hours=1)
    assert hour_window(local, None) == ((TEN, None), [])


def test_the_calendar_s_last_hour_bounds_a_period_without_overflow() -> None:
    latest = datetime.combine(date.max, time.max, tzinfo=UTC)
    assert hour_start_from(latest) is None
    # From inside the last hour: no hour starts in the period.
    assert hour_window(latest - timedelta(minutes=1), None) == (
        None,
        [(latest - timedelta(minutes=1), None)],
    )


def call(created_at: datetime, **fields: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "account_id": ACCOUNT,
        "team_id": None,
        "agent_id": None,
        "user_id": None,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "paid_by": "platform",
        "input_tokens": 3,
        "output_tokens": 4,
        "cost_usd": Decimal("0.5"),
        "duration_ms": 9,
        "created_at": created_at,
        "rolled_up": False,
        **fields,
    }
    return SimpleNamespace(**values)


def by_bucket(sums: rollups.Sums) -> dict[tuple[str, datetime], dict[str, Any]]:
    return {(row["grain"], row["bucket"]): row for row in sums.rows.values()}


def test_a_call_counts_in_its_hour_and_its_day() -> None:
    sums = rollups.usage_sums()
    rollups.add_calls(sums, [call(TEN + timedelta(minutes=42)), call(TEN + timedelta(hours=1))])
    rows = by_bucket(sums)
    assert sorted(rows) == [
        ("day", datetime(2026, 11, 2, tzinfo=UTC)),
        ("hour", TEN),
        ("hour", TEN + timedelta(hours=1)),
    ]
    day = rows[("day", datetime(2026, 11, 2, tzinfo=UTC))]
    assert (day["calls"], day["input_tokens"], day["cost_usd"], day["duration_ms"]) == (
        2,
        6,
        Decimal("1.0"),
        18,
    )


def test_a_purged_call_moves_to_its_day_s_first_hour() -> None:
    midnight = datetime(2026, 11, 2, tzinfo=UTC)
    sums = rollups.usage_sums()
    rollups.add_purged_calls(sums, [call(TEN, rolled_up=True)])
    rows = by_bucket(sums)
    assert rows[("hour", TEN)]["calls"] == -1
    assert rows[("hour", midnight)]["calls"] == 1
    assert ("day", midnight) not in rows  # its day already holds it
    # One not rolled up yet counts in its day's first hour and its day at once.
    sums = rollups.usage_sums()
    rollups.add_purged_calls(sums, [call(TEN)])
    assert {key: row["calls"] for key, row in by_bucket(sums).items()} == {
        ("hour", midnight): 1,
        ("day", midnight): 1,
    }


def test_an_execution_counts_where_it_ended_with_its_run_time() -> None:
    execution = SimpleNamespace(
        account_id=ACCOUNT,
        team_id=uuid.UUID(int=2),
        workflow={"strategy": "parallel"},
        status="completed",
        started_at=TEN - timedelta(minutes=2),
        finished_at=TEN + timedelta(seconds=30),
        updated_at=TEN + timedelta(seconds=31),
        input_tokens=10,
        output_tokens=20,
        cost_usd=Decimal("0.01"),
    )
    never_started = SimpleNamespace(
        **{**vars(execution), "started_at": None, "finished_at": None, "workflow": {}}
    )
    sums = rollups.execution_sums()
    rollups.add_executions(sums, [execution, never_started])
    rows = sorted(sums.rows.values(), key=lambda row: (row["grain"], row["strategy"]))
    assert [(r["grain"], r["strategy"], r["duration_ms"]) for r in rows] == [
        ("day", "parallel", 150_000),
        ("day", "sequential", 0),
        ("hour", "parallel", 150_000),
        ("hour", "sequential", 0),
    ]
    assert {row["bucket"] for row in rows if row["grain"] == Grain.hour} == {TEN}


def test_rollup_ids_are_stable_and_tell_rows_apart() -> None:
    key = (ACCOUNT, None, None, None, "openai", "gpt-4o", "platform")
    first = rollup_id("usage_rollups", "hour", TEN, *key)
    assert first == rollup_id("usage_rollups", "hour", TEN, *key)
    # Stored ids: the derivation must never change between releases.
    assert first == uuid.UUID("4d0d9152-3205-5993-9deb-f1be58344269")
    others = {
        rollup_id("usage_rollups", "day", TEN, *key),
        rollup_id("usage_rollups", "hour", TEN + timedelta(hours=1), *key),
        rollup_id("execution_rollups", "hour", TEN, *key),
        rollup_id("usage_rollups", "hour", TEN, *key[:-1], "user"),
    }
    assert first not in others
    assert len(others) == 4


@pytest.mark.anyio
async def test_the_migration_carries_purged_calls_into_the_rollups(tmp_path: Path) -> None:
    """Daily totals folded before the rollups existed count in their day's first hour and
    their day after the upgrade, with the ids the app computes (later folds add to them)."""
    engine = build_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"))
    tables = Base.metadata.tables
    day = date(2026, 10, 5)
    try:
        await migrate.upgrade(engine, "0012")
        async with engine.begin() as conn:
            await conn.execute(
                tables["accounts"].insert(), {"id": ACCOUNT, "name": "a", "name_key": "a"}
            )
            await conn.execute(
                text(
                    "INSERT INTO ledger_daily_totals (id, account_id, day, provider, model, "
                    "paid_by, calls, input_tokens, output_tokens, cost_usd) VALUES "
                    "(:id, :account, :day, 'openai', 'gpt-4o', 'platform', 3, 30, 40, 1.5)"
                ),
                {"id": uuid.uuid4().hex, "account": ACCOUNT.hex, "day": day.isoformat()},
            )
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            found = (await conn.execute(select(tables["usage_rollups"]))).all()
        midnight = datetime.combine(day, time(0), tzinfo=UTC)
        key = (ACCOUNT, None, None, None, "openai", "gpt-4o", "platform")
        assert {(row.id, row.grain, row.bucket, row.calls, row.cost_usd) for row in found} == {
            (rollup_id("usage_rollups", grain, midnight, *key), grain, midnight, 3, Decimal("1.5"))
            for grain in ("hour", "day")
        }
        await migrate.downgrade(engine, "0012")
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


# -- the analytics periods ------------------------------------------------------------------------


def test_an_analytics_period_is_whole_hours_read_from_days_where_it_can() -> None:
    since = datetime(2026, 11, 2, 10, 40, tzinfo=UTC)
    until = datetime(2026, 11, 5, 7, 5, tzinfo=UTC)
    period = Period.of(since, until)
    assert (period.start, period.end) == (TEN, datetime(2026, 11, 5, 8, tzinfo=UTC))
    assert period.pieces() == [
        ("hour", TEN, datetime(2026, 11, 3, tzinfo=UTC)),
        ("day", datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)),
        ("hour", datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 11, 5, 8, tzinfo=UTC)),
    ]
    assert period.count("hour") == 14 + 48 + 8
    assert period.count("day") == 4
    assert period.buckets("day") == [datetime(2026, 11, d, tzinfo=UTC) for d in (2, 3, 4, 5)]
    assert len(period.buckets("hour")) == period.count("hour")
    # Inside one day: hours only. An empty period: nothing.
    short = Period.of(TEN, TEN + timedelta(minutes=90))
    assert short.pieces() == [("hour", TEN, TEN + timedelta(hours=2))]
    assert Period.of(TEN, TEN).buckets("hour") == []
    # Midnight to midnight: days only.
    days = Period.of(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    assert days.pieces() == [
        ("day", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    ]


# -- the folder --------------------------------------------------------------------------------


async def add_ended_execution(engine: Any, account: uuid.UUID) -> None:
    tables = Base.metadata.tables
    team, execution = uuid.uuid4(), uuid.uuid4()
    ended = datetime.now(UTC)
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
                "workflow": {"strategy": "parallel"},
                "prompt": "p",
                "status": "completed",
                "started_at": ended - timedelta(seconds=2),
                "finished_at": ended,
            },
        )


@pytest.mark.anyio
async def test_the_folder_folds_on_a_kick_and_tells_its_observers(tmp_path: Path) -> None:
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'f.db'}"))
    await migrate.upgrade(database.engine)
    told: list[Folded] = []

    def broken(folded: Folded) -> None:
        raise RuntimeError("an observer that fails")

    folder = RollupFolder(database, RollupSettings(interval_seconds=3600), [broken, told.append])
    try:
        await folder.start()
        await asyncio.sleep(0.1)  # its first round: nothing to fold
        account = uuid.uuid4()
        await add_ended_execution(database.engine, account)
        with capture_logs() as logs:
            folder.kick()  # the interval is an hour: the kick folds it
            await wait_until_async(lambda: told, 5, "a fold")
        assert told == [Folded(executions=1, calls=0, accounts=frozenset({account}))]
        assert [log["event"] for log in logs] == ["rollups_observer_failed", "rollups_folded"]
    finally:
        await folder.stop()
        await folder.stop()  # stopping twice is harmless
        await database.dispose()


@pytest.mark.anyio
async def test_a_fold_that_fails_is_logged_once_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{path}"))
    await migrate.upgrade(database.engine)
    async with database.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE usage_rollups RENAME TO usage_rollups_away"))
        await conn.execute(text("ALTER TABLE execution_rollups RENAME TO execution_rollups_away"))
    folder = RollupFolder(database, RollupSettings(interval_seconds=0.05))
    try:
        with capture_logs() as logs:
            await add_ended_execution(database.engine, uuid.uuid4())
            await folder.start()
            await wait_until_async(lambda: len(logs) >= 1, 5, "a failed fold")
            await asyncio.sleep(0.2)  # more failed rounds: logged once
            async with database.engine.begin() as conn:
                await conn.execute(text("ALTER TABLE usage_rollups_away RENAME TO usage_rollups"))
                await conn.execute(
                    text("ALTER TABLE execution_rollups_away RENAME TO execution_rollups")
                )
            await wait_until_async(
                lambda: any(log["event"] == "rollups_fold_recovered" for log in logs), 5
            )
        events = [log["event"] for log in logs if log["event"].startswith("rollups_fold_")]
        assert events == ["rollups_fold_failed", "rollups_fold_recovered"]
    finally:
        await folder.stop()
        await database.dispose()
