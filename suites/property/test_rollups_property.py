"""Properties of the rollups (``app.repositories.rollups``): for any ledger rows and executions
(those of ``test_retention_property``'s strategies), rolled up in batches of any size,
interleaved with retention purges, at any point:

- every usage rollup equals the sums of the raw rows it stands for (the rolled-up calls of its
  hour or day, plus the daily totals of the day's purged calls in its first hour and its day),
  and every execution rollup the sums of the rolled-up executions that ended in it;
- ``GET /api/v1/usage``'s figures (``LedgerRepository.totals``), for every grouping and any
  period (to the minute, not only whole hours), equal the sums of the raw rows in it, purged
  calls counted by their day;
- a rebuild (``renum analytics rebuild``) gives the same rollups.

On the database of ``--db`` (SQLite by default; marked ``both_databases``), migrated once per
flavour and emptied before each example.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.capabilities.database_manager.retention import Retention
from app.core.config import DatabaseSettings, RetentionSettings
from app.db.base import Base
from app.db.database import build_engine
from app.repositories import rollups
from app.repositories.base import Scope
from app.repositories.ledger import GROUP_COLUMNS, LedgerRepository
from app.services.rollups import fold_all, rebuild
from qa import services
from suites.property.test_retention_property import (
    ACCOUNTS,
    NOW,
    Call,
    endings,
    ledgers,
    seed,
)

pytestmark = pytest.mark.both_databases

TABLES = Base.metadata.tables
USAGE_MEASURES = ("calls", "input_tokens", "output_tokens", "cost_usd", "duration_ms")
EXECUTION_MEASURES = ("executions", "duration_ms", "input_tokens", "output_tokens", "cost_usd")
GROUP_FIELDS = {
    "team": "team_id",
    "agent": "agent_id",
    "user": "user_id",
    "model": "model",
    "paid_by": "paid_by",
}


@pytest.fixture(scope="module")
def database_url(db_flavour: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if db_flavour not in ("sqlite", "postgresql"):
        pytest.skip("needs a local database; --target names a deployment")
    directory = tmp_path_factory.mktemp("rollups")
    with services.migrated_database(db_flavour, directory, "renum_rollups_p") as url:
        yield url


async def rows_of(engine: AsyncEngine, table: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(TABLES[table]))).all())


def nonzero(sums: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Rollup rows without the ones a purge emptied (moved to their day)."""
    return {key: row for key, row in sums.items() if any(row.values())}


def summed(entries: list[tuple[Any, dict[str, Any]]]) -> dict[Any, dict[str, Any]]:
    found: dict[Any, dict[str, Any]] = defaultdict(dict)
    for key, measures in entries:
        row = found[key]
        for name, value in measures.items():
            row[name] = row.get(name, 0) + value
    return nonzero(found)


def call_measures(row: Any) -> dict[str, Any]:
    return {
        "calls": 1,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": Decimal(row.cost_usd),
        "duration_ms": row.duration_ms,
    }


def day_start(day: Any) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


async def expected_usage_rollups(engine: AsyncEngine) -> dict[Any, dict[str, Any]]:
    entries = []
    for row in await rows_of(engine, "ledger_entries"):
        if row.rolled_up:
            key = tuple(getattr(row, name) for name in rollups.USAGE_KEY)
            entries.append((("hour", rollups.hour_of(row.created_at), key), call_measures(row)))
            entries.append((("day", rollups.day_of(row.created_at), key), call_measures(row)))
    for total in await rows_of(engine, "ledger_daily_totals"):
        key = tuple(getattr(total, name) for name in rollups.USAGE_KEY)
        measures = {name: getattr(total, name) for name in USAGE_MEASURES}
        for grain in ("hour", "day"):
            entries.append(((grain, day_start(total.day), key), measures))
    return summed(entries)


async def usage_rollups(engine: AsyncEngine) -> dict[Any, dict[str, Any]]:
    found = {}
    for row in await rows_of(engine, "usage_rollups"):
        key = tuple(getattr(row, name) for name in rollups.USAGE_KEY)
        found[(row.grain, row.bucket, key)] = {
            name: Decimal(getattr(row, name)) if name == "cost_usd" else getattr(row, name)
            for name in USAGE_MEASURES
        }
    return nonzero(found)


async def expected_execution_rollups(engine: AsyncEngine) -> dict[Any, dict[str, Any]]:
    entries = []
    for row in await rows_of(engine, "executions"):
        if row.rolled_up:
            end = row.finished_at or row.updated_at
            started = row.started_at
            measures = {
                "executions": 1,
                "duration_ms": 0
                if started is None
                else round((end - started) / timedelta(milliseconds=1)),
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "cost_usd": Decimal(row.cost_usd),
            }
            key = (row.account_id, row.team_id, "sequential", row.status)
            entries.append((("hour", rollups.hour_of(end), key), measures))
            entries.append((("day", rollups.day_of(end), key), measures))
    return summed(entries)


async def execution_rollups(engine: AsyncEngine) -> dict[Any, dict[str, Any]]:
    found = {}
    for row in await rows_of(engine, "execution_rollups"):
        key = tuple(getattr(row, name) for name in rollups.EXECUTION_KEY)
        found[(row.grain, row.bucket, key)] = {
            name: Decimal(getattr(row, name)) if name == "cost_usd" else getattr(row, name)
            for name in EXECUTION_MEASURES
        }
    return nonzero(found)


def in_window(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or since <= moment) and (until is None or moment < until)


async def expected_usage(
    engine: AsyncEngine, since: datetime | None, until: datetime | None
) -> dict[tuple[str, str], dict[Any, tuple[Any, ...]]]:
    """Usage from the raw rows: the ledger's rows in the period, and the daily totals of the
    days starting in it."""
    entries: list[tuple[Any, Any, dict[str, Any]]] = []
    for row in await rows_of(engine, "ledger_entries"):
        if in_window(row.created_at, since, until):
            entries.append((row.account_id, row, call_measures(row)))
    for total in await rows_of(engine, "ledger_daily_totals"):
        if in_window(day_start(total.day), since, until):
            measures = {name: getattr(total, name) for name in USAGE_MEASURES}
            entries.append((total.account_id, total, measures))
    found: dict[tuple[str, str], dict[Any, tuple[Any, ...]]] = {}
    for account in [*ACCOUNTS, None]:
        for group_by, field in GROUP_FIELDS.items():
            sums = summed(
                [
                    (getattr(row, field), measures)
                    for owner, row, measures in entries
                    if account is None or owner == account
                ]
            )
            found[(str(account), group_by)] = {
                key: (m["calls"], m["input_tokens"], m["output_tokens"], m["cost_usd"])
                for key, m in sums.items()
                if m.get("calls")
            }
    return found


async def usage(
    engine: AsyncEngine, since: datetime | None, until: datetime | None
) -> dict[tuple[str, str], dict[Any, tuple[Any, ...]]]:
    found = {}
    async with AsyncSession(engine) as session:
        ledger = LedgerRepository(session)
        for account in [*ACCOUNTS, None]:
            for group_by in GROUP_COLUMNS:
                rows = await ledger.totals(Scope(account), group_by, since=since, until=until)
                found[(str(account), group_by)] = {
                    key: (calls, tokens_in, tokens_out, Decimal(str(cost)))
                    for key, calls, tokens_in, tokens_out, cost in rows
                }
    return found


async def check_invariant(engine: AsyncEngine, windows: list[Any]) -> None:
    assert await usage_rollups(engine) == await expected_usage_rollups(engine)
    assert await execution_rollups(engine) == await expected_execution_rollups(engine)
    for since, until in windows:
        assert await usage(engine, since, until) == await expected_usage(engine, since, until)


async def fold_some(engine: AsyncEngine, batch_size: int, batches: int) -> None:
    for _ in range(batches):
        async with engine.begin() as conn:
            await rollups.fold_executions(conn, batch_size)
            await rollups.fold_calls(conn, batch_size)


async def end_executions(engine: AsyncEngine) -> None:
    """Executions the example left running end now: their calls may be rolled up."""
    executions = TABLES["executions"]
    async with engine.begin() as conn:
        await conn.execute(
            update(executions)
            .where(executions.c.status == "running")
            .values(status="failed", started_at=NOW - timedelta(hours=1), finished_at=NOW)
        )


# Instants from ORIGIN on: at midnight, on the hour or at any minute.
ORIGIN = datetime.combine((NOW - timedelta(days=61)).date(), time(0), tzinfo=UTC)
minutes = st.one_of(
    st.integers(0, 62).map(lambda days: days * 24 * 60),
    st.integers(0, 62 * 24).map(lambda hours: hours * 60),
    st.integers(0, 62 * 24 * 60),
)
# Lengths of periods; some end inside a day's first hour (where that day's purged calls count).
lengths = st.one_of(
    minutes,
    st.tuples(st.integers(0, 62), st.integers(1, 59)).map(lambda d: d[0] * 24 * 60 + d[1]),
)


# A call purged with its day, read through a period that ends inside that day's first hour.
PURGED_CALL = Call(
    execution=0,
    account=0,
    minutes_ago=20 * 24 * 60,
    team=True,
    user=None,
    agent=None,
    model="gpt-4o",
    paid_by="platform",
    input_tokens=5,
    output_tokens=7,
    cost=Decimal("0.25"),
)


# Each example seeds, folds, purges and rebuilds a database: half the profile's examples.
@settings(max_examples=max(10, settings.default.max_examples // 2))
@example(
    rows=[PURGED_CALL],
    ended=[15, None, None, None],
    batch_size=3,
    batches=1,
    ledger_days=7,
    bounds=[(None, 41 * 24 * 60 + 30), (41 * 24 * 60, 30)],
)
@given(
    rows=ledgers(),
    ended=endings,
    batch_size=st.integers(1, 7),
    batches=st.integers(0, 4),
    ledger_days=st.one_of(st.none(), st.integers(1, 14), st.integers(1, 60)),
    bounds=st.lists(st.tuples(st.one_of(st.none(), minutes), lengths), min_size=1, max_size=3),
)
def test_rollups_equal_the_sums_of_the_raw_rows(
    database_url: str,
    rows: list[Call],
    ended: list[int | None],
    batch_size: int,
    batches: int,
    ledger_days: int | None,
    bounds: list[tuple[int | None, int]],
) -> None:
    # Periods from any of those instants (or the beginning) to a later one, and everything.
    windows: list[tuple[datetime | None, datetime | None]] = [(None, None)]
    for start, length in bounds:
        since = None if start is None else ORIGIN + timedelta(minutes=start)
        windows.append((since, (since or ORIGIN) + timedelta(minutes=length)))

    async def check() -> None:
        engine = build_engine(DatabaseSettings(url=database_url))
        try:
            await seed(engine, ended, rows)
            await fold_some(engine, batch_size, batches)  # part of them rolled up
            await check_invariant(engine, windows)
            if ledger_days is not None:
                settings = RetentionSettings(ledger_days=ledger_days, batch_size=batch_size)
                await Retention(engine, lambda: settings, page_size=3).purge(now=NOW)
                await check_invariant(engine, windows)
            await end_executions(engine)
            await fold_all(engine, batch_size)
            async with engine.connect() as conn:
                ledger = TABLES["ledger_entries"]
                left = await conn.execute(select(ledger.c.id).where(~ledger.c.rolled_up))
                assert left.all() == []  # everything ended: everything is rolled up
            await check_invariant(engine, windows)
            folded = (await usage_rollups(engine), await execution_rollups(engine))
            await rebuild(engine, batch_size)
            assert (await usage_rollups(engine), await execution_rollups(engine)) == folded
            await check_invariant(engine, windows)
        finally:
            await engine.dispose()

    asyncio.run(check())
