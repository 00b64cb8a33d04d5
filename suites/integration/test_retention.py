"""The retention purge on a real database of each flavour given with ``--db``: a migrated
temporary database (SQLite file, or a PostgreSQL database created for the test and dropped
after) filled with SQLAlchemy Core, then purged in this process (``Retention``), through the
``renum db purge`` console script, and under a launched backend whose usage API is compared
before and after.

What is proven: only the expired kinds of ended executions go, never a row of a pending or
running execution; batches hold at most ``batch_size`` rows (counted from the report); the
ledger's rows are folded into daily totals so usage figures are identical after a purge (and
after concurrent purges); ``rollups_days`` removes daily totals; ``--dry-run`` changes nothing
and reports what the purge then removes; the command's exits and messages.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import teams_support as ts
from integration_support import Cli, cli_env
from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.capabilities.database_manager.retention import Retention
from app.core.config import DatabaseSettings, RetentionSettings
from app.db.base import Base, utcnow
from app.db.database import build_engine
from app.repositories.base import Scope
from app.repositories.ledger import GROUP_COLUMNS, LedgerRepository
from app.services.rollups import fold_all
from qa import services
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Reply
from qa.launcher import Backend, LaunchedBackend

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]

fresh_account = ts.fresh_account

TABLES = Base.metadata.tables
KIND_TABLES = {
    "events": "execution_events",
    "messages": "execution_messages",
    "context": "execution_context",
    "steps": "execution_steps",
    "ledger": "ledger_entries",
    "rollups": "ledger_daily_totals",
}
# A loopback port nothing listens on (the discard service): the connection is refused at once.
CLOSED_PORT_URL = "postgresql+asyncpg://postgres@127.0.0.1:9/test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def database_url(db_flavour: str, tmp_path: Path) -> Iterator[str]:
    """A database of ``db_flavour`` migrated to the head revision."""
    if db_flavour not in ("sqlite", "postgresql"):
        pytest.skip("needs a local database; --target names a deployment")
    with services.migrated_database(db_flavour, tmp_path, "renum_retention") as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = build_engine(DatabaseSettings(url=database_url))
    try:
        yield made
    finally:
        await made.dispose()


# -- the data -----------------------------------------------------------------------------------


def days_ago(days: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(days=days)


def midnight(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), time(0), tzinfo=UTC)


@dataclass
class Call:
    """One ledger row to record."""

    days_ago: float
    model: str = "gpt-4o-mini"
    paid_by: str = "platform"
    input_tokens: int = 10
    output_tokens: int = 5
    cost: Decimal = Decimal("0.00012345")
    user: uuid.UUID | None = None
    agent: uuid.UUID | None = None


@dataclass
class Shape:
    """What one execution owns."""

    steps: int = 2
    events: int = 3
    messages: int = 2
    context: int = 2
    calls: list[Call] = field(default_factory=list)


class World:
    """Accounts, teams and executions inserted with SQLAlchemy Core."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.now = utcnow()

    async def account(self) -> uuid.UUID:
        ident = uuid.uuid4()
        async with self.engine.begin() as conn:
            await conn.execute(
                TABLES["accounts"].insert(),
                {"id": ident, "name": f"acct {ident.hex[:6]}", "name_key": ident.hex},
            )
        return ident

    async def team(self, account: uuid.UUID) -> uuid.UUID:
        ident = uuid.uuid4()
        async with self.engine.begin() as conn:
            await conn.execute(
                TABLES["teams"].insert(),
                {"id": ident, "account_id": account, "name": f"team {ident.hex[:8]}"},
            )
        return ident

    async def execution(
        self,
        account: uuid.UUID,
        team: uuid.UUID,
        *,
        status: str = "completed",
        ended_days_ago: float | None = None,
        shape: Shape | None = None,
    ) -> uuid.UUID:
        """An execution with ``shape``'s rows; ended ``ended_days_ago`` (None: not ended, last
        updated long ago all the same, so only its status keeps it)."""
        shape = shape or Shape()
        ident = uuid.uuid4()
        ended = None if ended_days_ago is None else days_ago(ended_days_ago, self.now)
        long_ago = days_ago(400, self.now)
        async with self.engine.begin() as conn:
            await conn.execute(
                TABLES["executions"].insert(),
                {
                    "id": ident,
                    "account_id": account,
                    "team_id": team,
                    "workflow_version": 1,
                    "workflow": {"strategy": "sequential", "steps": []},
                    "prompt": "hello",
                    "status": status,
                    "started_at": long_ago,
                    "finished_at": ended,
                    "created_at": long_ago,
                    "updated_at": ended or long_ago,
                },
            )
            steps = [uuid.uuid4() for _ in range(shape.steps)]
            if steps:
                await conn.execute(
                    TABLES["execution_steps"].insert(),
                    [
                        {
                            "id": step,
                            "execution_id": ident,
                            "step_key": f"s{n}",
                            "position": n,
                            "status": "completed",
                        }
                        for n, step in enumerate(steps)
                    ],
                )
            stamp = ended or long_ago
            rows = {
                "execution_events": [
                    {"execution_id": ident, "seq": n + 1, "type": "step_completed", "data": {}}
                    for n in range(shape.events)
                ],
                "execution_messages": [
                    {
                        "execution_id": ident,
                        "seq": n + 1,
                        "kind": "direct",
                        "status": "delivered",
                        "sender_step": "s0",
                        "body": {"n": n},
                    }
                    for n in range(shape.messages)
                ],
                "execution_context": [
                    {"execution_id": ident, "key": "k", "version": n + 1, "value": n}
                    for n in range(shape.context)
                ],
            }
            for table, values in rows.items():
                if values:
                    await conn.execute(
                        TABLES[table].insert(), [{**v, "created_at": stamp} for v in values]
                    )
            for n, call in enumerate(shape.calls):
                await self.record(
                    conn, account, call, team=team, execution=ident, step=steps[n % len(steps)]
                )
        return ident

    async def record(
        self,
        conn: Any,
        account: uuid.UUID,
        call: Call,
        *,
        team: uuid.UUID | None,
        execution: uuid.UUID | None,
        step: uuid.UUID | None = None,
    ) -> None:
        await conn.execute(
            TABLES["ledger_entries"].insert(),
            {
                "account_id": account,
                "execution_id": execution,
                "step_id": step,
                "team_id": team,
                "agent_id": call.agent,
                "user_id": call.user,
                "provider": "openai",
                "model": call.model,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "cost_usd": call.cost,
                "duration_ms": 12,
                "paid_by": call.paid_by,
                "created_at": days_ago(call.days_ago, self.now),
            },
        )

    async def orphan_calls(self, account: uuid.UUID, team: uuid.UUID, *calls: Call) -> None:
        """Ledger rows whose execution is gone (deleted with its team)."""
        async with self.engine.begin() as conn:
            for call in calls:
                await self.record(conn, account, call, team=team, execution=None)


async def rows_of(engine: AsyncEngine, execution: uuid.UUID) -> dict[str, int]:
    """How many rows of each kind ``execution`` has."""
    found = {}
    async with engine.connect() as conn:
        for kind in ("events", "messages", "context", "steps", "ledger"):
            table = TABLES[KIND_TABLES[kind]]
            query = select(func.count()).select_from(table).where(table.c.execution_id == execution)
            found[kind] = int((await conn.execute(query)).scalar_one())
    return found


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            kind: int(
                (await conn.execute(select(func.count()).select_from(TABLES[name]))).scalar_one()
            )
            for kind, name in KIND_TABLES.items()
        }


async def foreign_key_problems(engine: AsyncEngine) -> list[Any]:
    """Rows pointing at missing rows (SQLite's check; PostgreSQL enforces them always)."""
    if engine.dialect.name != "sqlite":
        return []
    async with engine.connect() as conn:
        return list((await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall())


Figures = dict[tuple[str, str, str | None, str | None], list[tuple[Any, int, int, int, Decimal]]]


async def usage_figures(
    engine: AsyncEngine, accounts: list[uuid.UUID], windows: list[tuple[datetime | None, ...]]
) -> Figures:
    """Every usage grouping, for each account and for all accounts, over each window."""
    figures: Figures = {}
    async with AsyncSession(engine) as session:
        ledger = LedgerRepository(session)
        for account in [*accounts, None]:
            for group_by in GROUP_COLUMNS:
                for since, until in windows:
                    rows = await ledger.totals(Scope(account), group_by, since=since, until=until)
                    key = (
                        str(account),
                        group_by,
                        None if since is None else since.isoformat(),
                        None if until is None else until.isoformat(),
                    )
                    figures[key] = [(k, c, i, o, Decimal(str(cost))) for k, c, i, o, cost in rows]
    return figures


def whole_day_windows(now: datetime) -> list[tuple[datetime | None, ...]]:
    return [
        (None, None),
        (midnight(days_ago(20, now)), midnight(days_ago(5, now))),
        (midnight(days_ago(12, now)), None),
        (None, midnight(days_ago(9, now))),
        (midnight(days_ago(9, now)), midnight(days_ago(8, now))),
    ]


def retention(**settings: Any) -> RetentionSettings:
    return RetentionSettings(**settings)


# -- what goes and what stays -------------------------------------------------------------------


async def test_only_the_expired_kinds_of_ended_executions_go(engine: AsyncEngine) -> None:
    world = World(engine)
    account = await world.account()
    team = await world.team(account)
    calls = [Call(50), Call(45)]
    old = await world.execution(account, team, ended_days_ago=40, shape=Shape(calls=calls))
    middle = await world.execution(account, team, status="failed", ended_days_ago=10)
    recent = await world.execution(account, team, status="cancelled", ended_days_ago=1)
    running = await world.execution(account, team, status="running", shape=Shape(calls=calls))
    pending = await world.execution(account, team, status="pending")
    # A terminal status but no finish time: its last update counts.
    timed_out = await world.execution(account, team, status="timed_out")
    async with engine.begin() as conn:
        executions = TABLES["executions"]
        await conn.execute(
            update(executions)
            .where(executions.c.id == timed_out)
            .values(finished_at=None, updated_at=days_ago(50, world.now))
        )
    untouched = {e: await rows_of(engine, e) for e in (recent, running, pending)}

    purger = Retention(
        engine,
        lambda: retention(events_days=7, messages_days=7, steps_days=30, context_days=30),
    )
    report = await purger.purge()

    everything = {"events": 0, "messages": 0, "context": 0, "steps": 0}
    assert await rows_of(engine, old) == {**everything, "ledger": 2}  # the ledger: kept forever
    assert await rows_of(engine, timed_out) == {**everything, "ledger": 0}
    assert await rows_of(engine, middle) == {
        "events": 0,
        "messages": 0,
        "context": 2,
        "steps": 2,
        "ledger": 0,
    }
    for execution, rows in untouched.items():
        assert await rows_of(engine, execution) == rows
    assert report.removed == {"events": 9, "messages": 6, "context": 4, "steps": 4}
    assert list(report.kinds) == ["events", "messages", "context", "steps"]
    assert report.kinds["steps"].cutoff == report.now - timedelta(days=30)
    # The ledger rows of purged steps stay, pointing at no step (ON DELETE SET NULL).
    async with engine.connect() as conn:
        ledger = TABLES["ledger_entries"]
        steps = await conn.execute(select(ledger.c.step_id).where(ledger.c.execution_id == old))
        assert [row.step_id for row in steps] == [None, None]
    assert await foreign_key_problems(engine) == []

    # Nothing is left to purge: a second round removes nothing.
    again = await purger.purge()
    assert again.total == 0


async def test_batches_hold_at_most_batch_size_rows(engine: AsyncEngine) -> None:
    world = World(engine)
    account = await world.account()
    team = await world.team(account)
    one = await world.execution(
        account, team, ended_days_ago=10, shape=Shape(steps=1, events=5, messages=0, context=4)
    )
    purger = Retention(engine, lambda: retention(events_days=1, context_days=1, batch_size=2))
    report = await purger.purge()
    assert (report.kinds["events"].removed, report.kinds["events"].batches) == (5, 3)  # 2, 2, 1
    assert (report.kinds["context"].removed, report.kinds["context"].batches) == (4, 2)  # 2, 2
    assert await rows_of(engine, one) == {
        "events": 0,
        "messages": 0,
        "context": 0,
        "steps": 1,
        "ledger": 0,
    }


async def test_pages_of_executions_are_each_visited_once(engine: AsyncEngine) -> None:
    """Executions are read a page at a time (a small page here): every expired one is
    purged, however many pages there are."""
    world = World(engine)
    account = await world.account()
    team = await world.team(account)
    expired = [
        await world.execution(account, team, ended_days_ago=10 + n, shape=Shape(events=3))
        for n in range(7)
    ]
    kept = await world.execution(account, team, ended_days_ago=2, shape=Shape(events=3))
    purger = Retention(engine, lambda: retention(events_days=5, batch_size=4), page_size=3)
    report = await purger.purge()
    assert report.removed == {"events": 21}
    for execution in expired:
        assert (await rows_of(engine, execution))["events"] == 0
    assert (await rows_of(engine, kept))["events"] == 3


# -- the ledger and its daily totals ------------------------------------------------------------


async def ledger_world(engine: AsyncEngine) -> tuple[World, list[uuid.UUID], uuid.UUID]:
    """Two accounts whose calls spread over many days, models, payers, users and agents, in
    expired, recent and running executions, and some whose execution is gone."""
    world = World(engine)
    first, second = await world.account(), await world.account()
    users = [uuid.uuid4(), uuid.uuid4(), None]
    agents = [uuid.uuid4(), None]
    models = ["gpt-4o-mini", "gpt-4o", "claude"]
    running = None
    for account in (first, second):
        teams = [await world.team(account), await world.team(account)]
        for n in range(8):
            calls = [
                Call(
                    days_ago=4 + 3 * n + k * 0.3,
                    model=models[(n + k) % 3],
                    paid_by=("platform", "user")[k % 2],
                    input_tokens=100 * n + k,
                    output_tokens=7 * k + 1,
                    cost=Decimal("0.00000001") * (n * 1000 + k * 37 + 1) + Decimal(n),
                    user=users[(n + k) % 3],
                    agent=agents[k % 2],
                )
                for k in range(3 + n % 3)
            ]
            await world.execution(
                account, teams[n % 2], ended_days_ago=3 + 3 * n, shape=Shape(calls=calls)
            )
        running = await world.execution(
            account, teams[0], status="running", shape=Shape(calls=[Call(30), Call(29.5)])
        )
        await world.orphan_calls(account, teams[1], Call(25), Call(24.2, model="gpt-4o"), Call(2))
    assert running is not None
    return world, [first, second], running


async def test_usage_figures_are_the_same_after_a_purge(engine: AsyncEngine) -> None:
    world, accounts, running = await ledger_world(engine)
    windows = whole_day_windows(world.now)
    before = await usage_figures(engine, accounts, windows)
    assert before[(str(accounts[0]), "model", None, None)], "the world has usage"
    counts = await table_counts(engine)

    purger = Retention(engine, lambda: retention(ledger_days=7, batch_size=5))
    report = await purger.purge()

    after = await usage_figures(engine, accounts, windows)
    assert after == before
    left = await table_counts(engine)
    assert report.removed == {"ledger": counts["ledger"] - left["ledger"]}
    assert report.kinds["ledger"].batches > 1
    assert left["rollups"] > 0
    # Each purged row is in the totals once: their calls add up to the rows removed.
    async with engine.connect() as conn:
        totals = TABLES["ledger_daily_totals"]
        folded = (await conn.execute(select(func.sum(totals.c.calls)))).scalar_one()
        assert int(folded) == report.removed["ledger"]
        # Nothing of the running execution, nor any row recorded in the last 7 days, went.
        ledger = TABLES["ledger_entries"]
        young = select(func.count()).where(ledger.c.created_at > days_ago(3, world.now))
        assert (await conn.execute(young.select_from(ledger))).scalar_one() > 0
        oldest = (await conn.execute(select(func.min(ledger.c.created_at)))).scalar_one()
    assert report.kinds["ledger"].oldest_kept == oldest
    assert (await rows_of(engine, running))["ledger"] == 2
    assert await foreign_key_problems(engine) == []

    # A second purge finds nothing; the figures do not move.
    assert (await purger.purge()).total == 0
    assert await usage_figures(engine, accounts, windows) == before


async def test_a_folded_day_counts_when_its_start_is_in_the_period(engine: AsyncEngine) -> None:
    """After a purge, a period that starts inside a folded day leaves that day out; one that
    ends inside it counts all of it (documented in docs/database.md)."""
    world = World(engine)
    account = await world.account()
    team = await world.team(account)
    day = midnight(days_ago(20, world.now))
    morning, evening = day + timedelta(hours=6), day + timedelta(hours=18)
    calls = [
        Call((world.now - morning) / timedelta(days=1), input_tokens=1),
        Call((world.now - evening) / timedelta(days=1), input_tokens=2),
    ]
    await world.execution(account, team, ended_days_ago=15, shape=Shape(calls=calls))
    noon = day + timedelta(hours=12)

    async def tokens(since: datetime | None, until: datetime | None) -> int:
        async with AsyncSession(engine) as session:
            rows = await LedgerRepository(session).totals(
                Scope(account), "team", since=since, until=until
            )
        return sum(row[2] for row in rows)

    assert (await tokens(noon, None), await tokens(None, noon)) == (2, 1)
    await Retention(engine, lambda: retention(ledger_days=7)).purge()
    assert await tokens(None, None) == 3
    assert (await tokens(day, day + timedelta(days=1))) == 3
    assert (await tokens(noon, None), await tokens(None, noon)) == (0, 3)


async def test_rollups_days_removes_old_daily_totals_and_rollups(engine: AsyncEngine) -> None:
    world, accounts, _ = await ledger_world(engine)
    await fold_all(engine, 1000)  # the ended executions and their calls rolled up
    await Retention(engine, lambda: retention(ledger_days=7)).purge()
    everything = await usage_figures(engine, accounts, [(None, None)])
    cutoff = midnight(days_ago(15, world.now))
    # What the usage reports from the days kept, before the old totals go.
    recent_window = [(cutoff, None)]
    recent = await usage_figures(engine, accounts, recent_window)
    # The figures of the days before the cut-off: the daily totals of purged calls and the
    # usage and execution rollups (an hour's and a day's).
    totals, usage, executions = (
        TABLES[name] for name in ("ledger_daily_totals", "usage_rollups", "execution_rollups")
    )
    old = [
        select(func.count()).where(totals.c.day < cutoff.date()).select_from(totals),
        *(
            select(func.count()).where(table.c.bucket < cutoff).select_from(table)
            for table in (usage, executions)
        ),
    ]
    async with engine.connect() as conn:
        counts = [int((await conn.execute(query)).scalar_one()) for query in old]
    expected = sum(counts)
    assert all(counts), counts

    purger = Retention(engine, lambda: retention(ledger_days=7, rollups_days=15, batch_size=3))
    preview = await purger.preview()
    report = await purger.purge()

    assert preview.removed["rollups"] == report.removed["rollups"] == expected
    assert report.kinds["rollups"].batches >= expected // 3
    assert report.removed["ledger"] == 0
    oldest = report.kinds["rollups"].oldest_kept
    assert isinstance(oldest, date)
    assert oldest >= cutoff.date()
    # The days kept report what they did; the figures over everything dropped by the rest.
    assert await usage_figures(engine, accounts, recent_window) == recent
    assert await usage_figures(engine, accounts, [(None, None)]) != everything


async def test_concurrent_purges_fold_each_row_once(engine: AsyncEngine, database_url: str) -> None:
    """Three purges at once, each on its own engine (its own connections): every row is
    removed and folded by exactly one of them; the figures stay exact."""
    world, accounts, _ = await ledger_world(engine)
    windows = whole_day_windows(world.now)
    before = await usage_figures(engine, accounts, windows)
    expired = await Retention(engine, lambda: retention(ledger_days=7, events_days=7)).preview()
    engines = [build_engine(DatabaseSettings(url=database_url)) for _ in range(3)]
    try:
        purgers = [
            Retention(e, lambda: retention(ledger_days=7, events_days=7, batch_size=3))
            for e in engines
        ]
        reports = await asyncio.gather(*(p.purge() for p in purgers))
    finally:
        for made in engines:
            await made.dispose()
    removed = sum(report.removed["ledger"] for report in reports)
    assert removed == expired.removed["ledger"]
    assert sum(report.removed["events"] for report in reports) == expired.removed["events"]
    assert await usage_figures(engine, accounts, windows) == before
    async with engine.connect() as conn:
        totals = TABLES["ledger_daily_totals"]
        folded = (await conn.execute(select(func.sum(totals.c.calls)))).scalar_one()
    assert int(folded) == removed
    assert (await Retention(engine, lambda: retention(ledger_days=7)).purge()).total == 0


# -- renum db purge -----------------------------------------------------------------------------


def purge_cli(tmp_path: Path, url: str, **settings: str) -> Cli:
    env = cli_env(
        RENUM_ENVIRONMENT="test",
        RENUM_SECRET_KEY="retention-test-secret-key-0123456789abcdefghij",
        RENUM_DATABASE__URL=url,
        **{f"RENUM_DATABASE_MANAGER__RETENTION__{k.upper()}": v for k, v in settings.items()},
    )
    return Cli(env=env, cwd=tmp_path)


def exits(result: subprocess.CompletedProcess[str], code: int) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, f"a traceback instead of a message:\n{output}"
    assert result.returncode == code, f"expected exit {code}, got {result.returncode}:\n{output}"
    return output


async def test_dry_run_changes_nothing_and_counts_what_the_purge_removes(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    world, _, _ = await ledger_world(engine)
    account = await world.account()
    team = await world.team(account)
    for n in range(3):
        await world.execution(account, team, ended_days_ago=20 + n, shape=Shape(calls=[Call(21)]))
    before = await table_counts(engine)
    cli = purge_cli(
        tmp_path,
        database_url,
        events_days="7",
        messages_days="7",
        context_days="7",
        steps_days="14",
        ledger_days="10",
        batch_size="4",
    )

    dry = json.loads(exits(await asyncio.to_thread(cli, "db", "purge", "--dry-run", "--json"), 0))
    assert await table_counts(engine) == before
    assert (dry["status"], dry["dry_run"], dry["configured"]) == ("ok", True, True)
    would = {kind["kind"]: kind["removed"] for kind in dry["kinds"]}
    assert set(would) == {"ledger", "events", "messages", "context", "steps"}
    assert all(would.values())
    cutoff = datetime.fromisoformat(dry["kinds"][0]["cutoff"])
    assert abs(cutoff - days_ago(10)) < timedelta(minutes=5)

    text_ = exits(await asyncio.to_thread(cli, "db", "purge", "--dry-run"), 0)
    lines = text_.strip().splitlines()
    assert lines[0].split() == ["kind", "days", "cut-off", "(UTC)", "would", "remove", "batches"]
    assert lines[1].split()[:2] == ["ledger", "10"]
    assert lines[1].split()[4:] == [str(would["ledger"]), "-"]
    assert lines[-1] == (
        f"dry run: {sum(would.values())} rows would be removed; nothing was changed"
    )
    assert await table_counts(engine) == before

    done = json.loads(exits(await asyncio.to_thread(cli, "db", "purge", "--json"), 0))
    assert done["dry_run"] is False
    assert {kind["kind"]: kind["removed"] for kind in done["kinds"]} == would
    after = await table_counts(engine)
    for kind, count in would.items():
        assert before[kind] - after[kind] == count, kind
    batches = {kind["kind"]: kind["batches"] for kind in done["kinds"]}
    assert batches["ledger"] >= would["ledger"] // 4

    text_ = exits(await asyncio.to_thread(cli, "db", "purge"), 0)
    assert text_.strip().splitlines()[-1].startswith("purged 0 rows in ")


def test_purge_without_retention_says_so(tmp_path: Path, database_url: str) -> None:
    cli = purge_cli(tmp_path, database_url)
    text_ = exits(cli("db", "purge"), 0)
    assert text_.strip() == (
        "No retention is configured (RENUM_DATABASE_MANAGER__RETENTION__<KIND>_DAYS): "
        "nothing to purge."
    )
    report = json.loads(exits(cli("db", "purge", "--dry-run", "--json"), 0))
    assert (report["configured"], report["kinds"], report["total"]) == (False, [], 0)


@pytest.mark.parametrize("flag", [[], ["--dry-run"], ["--json"]])
def test_purge_on_an_unreachable_database_exits_2(tmp_path: Path, flag: list[str]) -> None:
    cli = purge_cli(tmp_path, CLOSED_PORT_URL, events_days="7")
    result = cli("db", "purge", *flag)
    exits(result, 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "Cannot purge: cannot reach the database at postgresql+asyncpg://postgres@127.0.0.1:9/test"
    )
    if "--json" in flag:
        assert json.loads(result.stdout)["status"] == "error"


def test_purge_creates_no_sqlite_database(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    cli = purge_cli(tmp_path, f"sqlite+aiosqlite:///{missing}", events_days="7")
    result = cli("db", "purge")
    exits(result, 2)
    assert result.stderr.strip() == (
        f"Cannot purge: no SQLite database at {missing}: run `renum db upgrade` to create it"
    )
    assert not missing.exists()


# -- under a running backend: the usage API ---------------------------------------------------


def test_usage_api_reports_the_same_after_a_purge(
    backend: Backend, fresh_account: ts.Account, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Executions run through the API (their calls on the fake model server), are made old
    in the database, then purged by ``renum db purge``: ``GET /api/v1/usage`` answers the same
    for every grouping, and the executions' events and steps are gone."""
    if not isinstance(backend, LaunchedBackend):
        pytest.skip("needs the launched backend's database; --target hides it")
    owner = fresh_account.owner
    agent = ts.model_agent(owner, fake_openai.base_url)
    other = ts.model_agent(owner, fake_openai.base_url, model="gpt-4o")
    team = ts.create_team(
        owner, [agent, other], ts.workflow("sequential", [ts.step("a", agent), ts.step("b", other)])
    )
    executions = []
    for n in range(3):
        fake_openai.script(
            Reply("x", input_tokens=10 + n, output_tokens=3),
            Reply("y", input_tokens=20, output_tokens=5 + n),
        )
        executions.append(ts.run_to_end(owner, team)["id"])
    url = backend.env["RENUM_DATABASE__URL"]
    long_ago = utcnow() - timedelta(days=30)
    ids = [uuid.UUID(e) for e in executions]

    async def backdate() -> None:
        made = build_engine(DatabaseSettings(url=url))
        try:
            async with made.begin() as conn:
                executions_ = TABLES["executions"]
                ledger: Table = TABLES["ledger_entries"]
                await conn.execute(
                    update(executions_)
                    .where(executions_.c.id.in_(ids))
                    .values(finished_at=long_ago)
                )
                await conn.execute(
                    update(ledger).where(ledger.c.execution_id.in_(ids)).values(created_at=long_ago)
                )
        finally:
            await made.dispose()

    asyncio.run(backdate())

    def usage(group_by: str, **window: str) -> dict[str, Any]:
        return expect(owner.get(ts.USAGE, params={"group_by": group_by, **window}), 200)

    day = midnight(long_ago)
    windows: list[dict[str, str]] = [
        {},
        {"from": day.isoformat()},
        {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()},
    ]
    groupings = ("team", "agent", "user", "model", "paid_by")
    before = {(g, json.dumps(w)): usage(g, **w) for g in groupings for w in windows}
    assert before[("model", "{}")]["total"]["calls"] == 6

    cli = purge_cli(tmp_path, url, ledger_days="7", events_days="7", steps_days="7")
    report = json.loads(exits(cli("db", "purge", "--json"), 0))
    removed = {kind["kind"]: kind["removed"] for kind in report["kinds"]}
    assert removed["ledger"] >= 6
    assert removed["steps"] >= 6

    after = {(g, json.dumps(w)): usage(g, **w) for g in groupings for w in windows}
    assert after == before
    execution = ts.get_execution(owner, executions[0])
    assert execution["status"] == "completed"
    assert execution["steps"] == []
    assert ts.events_of(owner, executions[0]) == []
