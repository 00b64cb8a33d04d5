"""Properties of the retention purge's ledger folding (``app.capabilities.database_manager
.retention``): for any ledger rows (two accounts; any team, agent, user, model and payer; any
tokens and exact costs; recorded at any minute of the last 60 days) in executions that ended at
any time, are still running, or are gone, and for any retention and batch size, the usage
figures of every grouping, over everything and over any whole-day period, are the same after a
purge as before; the rows removed are exactly those of executions that ended before the
cut-off (and of gone executions recorded before it), and each is in the daily totals once.

On the database of ``--db`` (SQLite by default; marked ``both_databases``), migrated once per
flavour and emptied before each example.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.capabilities.database_manager.retention import Retention
from app.core.config import DatabaseSettings, RetentionSettings
from app.db.base import Base
from app.db.database import build_engine
from app.repositories.base import Scope
from app.repositories.ledger import GROUP_COLUMNS, LedgerRepository
from qa import services

pytestmark = pytest.mark.both_databases

TABLES = Base.metadata.tables
NOW = datetime(2026, 12, 4, 15, 30, 12, tzinfo=UTC)
ACCOUNTS = [uuid.UUID(int=1), uuid.UUID(int=2)]
TEAMS = [uuid.UUID(int=11), uuid.UUID(int=12)]  # one per account
EXECUTIONS = [uuid.UUID(int=21), uuid.UUID(int=22), uuid.UUID(int=23), uuid.UUID(int=24)]
USERS = [uuid.UUID(int=31), uuid.UUID(int=32), None]
AGENTS = [uuid.UUID(int=41), None]


@pytest.fixture(scope="module")
def database_url(db_flavour: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if db_flavour not in ("sqlite", "postgresql"):
        pytest.skip("needs a local database; --target names a deployment")
    directory = tmp_path_factory.mktemp("retention")
    with services.migrated_database(db_flavour, directory, "renum_retention_p") as url:
        yield url


@dataclass(frozen=True)
class Call:
    execution: int | None  # an index of EXECUTIONS, or None: its execution is gone
    account: int  # used when execution is None
    minutes_ago: int
    team: bool
    user: uuid.UUID | None
    agent: uuid.UUID | None
    model: str
    paid_by: str
    input_tokens: int
    output_tokens: int
    cost: Decimal


@st.composite
def ledgers(draw: st.DrawFn) -> list[Call]:
    """Up to 30 calls sharing a few usage keys (so that a day folds several calls into one
    total), most of them in the last few days, some up to 60 days old."""
    keys = draw(
        st.lists(
            st.tuples(
                st.booleans(),
                st.sampled_from(USERS),
                st.sampled_from(AGENTS),
                st.sampled_from(["gpt-4o-mini", "gpt-4o"]),
                st.sampled_from(["platform", "user"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    found = []
    for _ in range(draw(st.integers(0, 30))):
        team, user, agent, model, paid_by = draw(st.sampled_from(keys))
        days = draw(st.one_of(st.integers(0, 2), st.integers(0, 12), st.integers(0, 60)))
        found.append(
            Call(
                execution=draw(st.one_of(st.none(), st.integers(0, len(EXECUTIONS) - 1))),
                account=draw(st.integers(0, 1)),
                minutes_ago=days * 24 * 60 + draw(st.integers(0, 24 * 60 - 1)),
                team=team,
                user=user,
                agent=agent,
                model=model,
                paid_by=paid_by,
                input_tokens=draw(st.integers(0, 1_000_000)),
                output_tokens=draw(st.integers(0, 1_000_000)),
                cost=draw(
                    st.decimals(
                        min_value=0,
                        max_value=1000,
                        places=8,
                        allow_nan=False,
                        allow_infinity=False,
                    )
                ),
            )
        )
    return found


# When each execution ended, in days before NOW (None: still running).
endings = st.lists(
    st.one_of(st.none(), st.integers(0, 14), st.integers(0, 60)),
    min_size=len(EXECUTIONS),
    max_size=len(EXECUTIONS),
)


def account_of(execution: int) -> int:
    return execution % 2


async def seed(engine: AsyncEngine, ended: list[int | None], rows: list[Call]) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(TABLES["accounts"]))  # everything else goes with them
        await conn.execute(
            TABLES["accounts"].insert(),
            [{"id": a, "name": f"a{n}", "name_key": f"a{n}"} for n, a in enumerate(ACCOUNTS)],
        )
        await conn.execute(
            TABLES["teams"].insert(),
            [{"id": t, "account_id": a, "name": "t"} for t, a in zip(TEAMS, ACCOUNTS, strict=True)],
        )
        await conn.execute(
            TABLES["executions"].insert(),
            [
                {
                    "id": execution,
                    "account_id": ACCOUNTS[account_of(n)],
                    "team_id": TEAMS[account_of(n)],
                    "workflow_version": 1,
                    "workflow": {},
                    "prompt": "p",
                    "status": "running" if days is None else "completed",
                    "finished_at": None if days is None else NOW - timedelta(days=days),
                    "updated_at": NOW - timedelta(days=90),
                }
                for n, (execution, days) in enumerate(zip(EXECUTIONS, ended, strict=True))
            ],
        )
        if rows:
            await conn.execute(TABLES["ledger_entries"].insert(), [ledger_row(c) for c in rows])


def ledger_row(call: Call) -> dict[str, Any]:
    account = call.account if call.execution is None else account_of(call.execution)
    return {
        "account_id": ACCOUNTS[account],
        "execution_id": None if call.execution is None else EXECUTIONS[call.execution],
        "team_id": TEAMS[account] if call.team else None,
        "agent_id": call.agent,
        "user_id": call.user,
        "provider": "openai",
        "model": call.model,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cost_usd": call.cost,
        "duration_ms": 1,
        "paid_by": call.paid_by,
        "created_at": NOW - timedelta(minutes=call.minutes_ago),
    }


async def figures(
    engine: AsyncEngine, window: tuple[datetime | None, datetime | None]
) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    found = {}
    async with AsyncSession(engine) as session:
        ledger = LedgerRepository(session)
        for account in [*ACCOUNTS, None]:
            for group_by in GROUP_COLUMNS:
                rows = await ledger.totals(
                    Scope(account), group_by, since=window[0], until=window[1]
                )
                found[(str(account), group_by)] = [
                    (key, calls, tokens_in, tokens_out, Decimal(str(cost)))
                    for key, calls, tokens_in, tokens_out, cost in rows
                ]
    return found


def expired(call: Call, ended: list[int | None], cutoff: datetime) -> bool:
    if call.execution is None:
        return NOW - timedelta(minutes=call.minutes_ago) < cutoff
    days = ended[call.execution]
    return days is not None and NOW - timedelta(days=days) < cutoff


def midnight(days_ago: int) -> datetime:
    return datetime.combine((NOW - timedelta(days=days_ago)).date(), time(0), tzinfo=UTC)


@given(
    rows=ledgers(),
    ended=endings,
    ledger_days=st.one_of(st.integers(1, 14), st.integers(1, 60)),
    batch_size=st.integers(1, 7),
    first=st.integers(0, 20),
    length=st.integers(1, 20),
)
def test_raw_sums_plus_daily_totals_after_a_purge_equal_the_raw_sums_before(
    database_url: str,
    rows: list[Call],
    ended: list[int | None],
    ledger_days: int,
    batch_size: int,
    first: int,
    length: int,
) -> None:
    windows = [(None, None), (midnight(first), midnight(first - length))]

    async def check() -> None:
        engine = build_engine(DatabaseSettings(url=database_url))
        try:
            await seed(engine, ended, rows)
            before = [await figures(engine, window) for window in windows]
            settings = RetentionSettings(ledger_days=ledger_days, batch_size=batch_size)
            report = await Retention(engine, lambda: settings, page_size=3).purge(now=NOW)
            after = [await figures(engine, window) for window in windows]
            assert after == before

            cutoff = NOW - timedelta(days=ledger_days)
            going = [call for call in rows if expired(call, ended, cutoff)]
            assert report.removed == {"ledger": len(going)}
            async with engine.connect() as conn:
                left = TABLES["ledger_entries"]
                totals = TABLES["ledger_daily_totals"]
                count = (await conn.execute(select(func.count()).select_from(left))).scalar_one()
                folded = (await conn.execute(select(func.sum(totals.c.calls)))).scalar_one()
            assert count == len(rows) - len(going)
            assert int(folded or 0) == len(going)
        finally:
            await engine.dispose()

    asyncio.run(check())
