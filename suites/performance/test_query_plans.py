"""Every list and aggregate read uses an index at realistic volumes (PostgreSQL).

A private database holds 100,000 executions and 1,000,000 execution events of 50 accounts
(and 200,000 ledger rows, 200,000 webhook deliveries, and a year of hourly and daily usage
and execution rollups of every account: 912,500 rows), seeded in the test with
``generate_series`` and analysed. The reads behind the list and aggregate endpoints run
through their repositories, for one tenant (and, with a time window, for a platform admin);
every statement they issue is explained with its own parameters, and a sequential scan of a
table over ``LARGE_ROWS`` fails the test, naming the statement. ``test_the_guard_bites``
shows the check failing on a read without an index. The execution list's keyset page (after a
cursor, deep in the list) is read from the list's index at the cursor's position, neither
sorting nor skipping the rows before it; so is a webhook's delivery log (newest first).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.capabilities.analytics import figures
from app.core.config import Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.repositories.base import Position, Scope
from app.repositories.deliveries import DeliveryRepository
from app.repositories.executions import ExecutionRepository
from app.repositories.ledger import LedgerRepository
from app.repositories.messages import MessageRepository
from qa import services

LARGE_ROWS = 10_000
ACCOUNTS = 50
EXECUTIONS = 100_000
EVENTS_PER_EXECUTION = 10
LEDGER_ROWS = 200_000
DELIVERIES_PER_WEBHOOK = 4_000  # one webhook per account: 200,000 deliveries
ROLLUP_DAYS = 365  # of hourly and daily rollups per account: 456,250 rows of each table

SEED = [
    """INSERT INTO accounts (id, name, name_key, is_platform, created_at, updated_at)
    SELECT gen_random_uuid(), 'account ' || n, 'account-' || n, false, now(), now()
    FROM generate_series(1, :accounts) AS n""",
    """INSERT INTO users (id, account_id, email, password_hash, role, is_active, created_at,
    updated_at)
    SELECT gen_random_uuid(), id, name_key || '@example.com', 'x', 'owner', true, now(), now()
    FROM accounts""",
    """INSERT INTO teams (id, account_id, name, workflow_version, created_at, updated_at)
    SELECT gen_random_uuid(), a.id, 'team ' || t, 1, now(), now()
    FROM accounts a, generate_series(1, 4) AS t""",
    """INSERT INTO executions (id, account_id, team_id, workflow_version, workflow, prompt,
    variables, budget, status, resumed_count, input_tokens, output_tokens, cost_usd,
    last_event_seq, created_at, updated_at)
    SELECT gen_random_uuid(), t.account_id, t.id, 1, '{}', 'prompt', '{}', '{}',
        (ARRAY['completed', 'failed', 'cancelled', 'running'])[1 + n % 4], 0, 0, 0, 0,
        :events, now() - n * interval '1 minute', now()
    FROM generate_series(1, :executions) AS n
    JOIN (SELECT id, account_id, row_number() OVER () - 1 AS k FROM teams) AS t
        ON t.k = n % (SELECT count(*) FROM teams)""",
    """INSERT INTO execution_events (id, execution_id, seq, type, data, created_at)
    SELECT gen_random_uuid(), e.id, s, 'step_completed', '{}', e.created_at
    FROM executions e, generate_series(1, :events) AS s""",
    # Ended executions and their calls are rolled up (within moments of their end).
    "UPDATE executions SET rolled_up = (status <> 'running')",
    """INSERT INTO ledger_entries (id, account_id, execution_id, team_id, agent_id, user_id,
    provider, model, input_tokens, output_tokens, cost_usd, duration_ms, paid_by, created_at,
    rolled_up)
    SELECT gen_random_uuid(), e.account_id, e.id, e.team_id, NULL, NULL, 'openai',
        'gpt-4o-mini', 100, 20, 0.0001, 300, 'platform', e.created_at, e.rolled_up
    FROM (SELECT * FROM executions LIMIT :ledger_half) AS e,
        generate_series(1, 2) AS twice""",
    # A year of rollups of every account: each hour and each day of it, for one of its teams.
    """INSERT INTO usage_rollups (id, grain, bucket, account_id, team_id, agent_id, user_id,
    provider, model, paid_by, calls, input_tokens, output_tokens, cost_usd, duration_ms)
    SELECT gen_random_uuid(), g.grain, g.bucket, t.account_id, t.id, NULL, NULL, 'openai',
        'gpt-4o-mini', 'platform', 3, 300, 60, 0.0003, 900
    FROM (SELECT DISTINCT ON (account_id) account_id, id FROM teams) AS t,
        (SELECT 'hour' AS grain, date_trunc('hour', now()) - n * interval '1 hour' AS bucket
         FROM generate_series(0, :rollup_hours) AS n
         UNION ALL
         SELECT 'day', date_trunc('day', now()) - n * interval '1 day'
         FROM generate_series(0, :rollup_days) AS n) AS g""",
    """INSERT INTO execution_rollups (id, grain, bucket, account_id, team_id, strategy, status,
    executions, duration_ms, input_tokens, output_tokens, cost_usd)
    SELECT gen_random_uuid(), u.grain, u.bucket, u.account_id, u.team_id, 'sequential',
        'completed', 1, 5000, u.input_tokens, u.output_tokens, u.cost_usd
    FROM usage_rollups u""",
    """INSERT INTO webhooks (id, account_id, url, events, enabled, sealed_secret,
    encryption_key_id, created_at, updated_at)
    SELECT gen_random_uuid(), id, 'https://hooks.example/' || name_key, '["execution.completed"]',
        true, 'sealed', 'k1', now(), now()
    FROM accounts""",
    """INSERT INTO deliveries (id, account_id, webhook_id, kind, event, url, guarded, payload,
    status, attempts, next_attempt_at, created_at, updated_at)
    SELECT gen_random_uuid(), w.account_id, w.id, 'webhook', 'execution.completed', w.url, true,
        '{}', (ARRAY['delivered', 'dead'])[1 + n % 2], 1, now(),
        now() - n * interval '1 second', now()
    FROM webhooks w, generate_series(1, :deliveries_per_webhook) AS n""",
    "ANALYZE",
]


@pytest.fixture(scope="module")
def database() -> Iterator[SQLAlchemyManager]:
    name = f"renum_plans_{uuid.uuid4().hex[:10]}"
    url = services.create_postgres_database(name)
    loop = asyncio.new_event_loop()
    manager = SQLAlchemyManager(Settings(database={"url": url}).database)

    async def prepare() -> None:
        await migrate.upgrade(manager.engine)
        async with manager.engine.begin() as connection:
            volumes = {
                "accounts": ACCOUNTS,
                "executions": EXECUTIONS,
                "events": EVENTS_PER_EXECUTION,
                "ledger_half": LEDGER_ROWS // 2,
                "deliveries_per_webhook": DELIVERIES_PER_WEBHOOK,
                "rollup_hours": ROLLUP_DAYS * 24 - 1,
                "rollup_days": ROLLUP_DAYS - 1,
            }
            for statement in SEED:
                used = {k: v for k, v in volumes.items() if f":{k}" in statement}
                await connection.execute(text(statement), used)

    loop.run_until_complete(prepare())
    manager.loop = loop  # type: ignore[attr-defined]
    try:
        yield manager
    finally:
        loop.run_until_complete(manager.dispose())
        loop.close()
        services.drop_postgres_database(name)


def run(database: SQLAlchemyManager, coroutine: Awaitable[Any]) -> Any:
    return database.loop.run_until_complete(coroutine)  # type: ignore[attr-defined]


async def statements_of(
    database: SQLAlchemyManager, read: Callable[[AsyncSession], Awaitable[object]]
) -> list[tuple[str, Any]]:
    """The statements ``read`` issued, with their parameters (as the driver got them)."""
    issued: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        issued.append((statement, parameters))

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        async with database.session() as session:
            await read(session)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return issued


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


async def sequential_scans(
    connection: AsyncConnection, statement: str, parameters: Any
) -> list[str]:
    """The large tables the plan of ``statement`` reads whole."""
    raw = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
    plan = raw.scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found = []
    for node in plan_nodes(plan[0]["Plan"]):
        if node["Node Type"] == "Seq Scan":
            rows = (
                await connection.execute(
                    text("SELECT reltuples FROM pg_class WHERE relname = :name"),
                    {"name": node["Relation Name"]},
                )
            ).scalar_one()
            if rows > LARGE_ROWS:
                found.append(f"{node['Relation Name']} ({int(rows)} rows)")
    return found


async def check(
    database: SQLAlchemyManager, read: Callable[[AsyncSession], Awaitable[object]]
) -> dict[str, list[str]]:
    """Each statement of ``read`` with the large tables it scans whole (none: not listed)."""
    found = {}
    for statement, parameters in await statements_of(database, read):
        async with database.engine.connect() as connection:
            scans = await sequential_scans(connection, statement, parameters)
        if scans:
            found[" ".join(statement.split())[:300]] = scans
    return found


def deep_position(database: SQLAlchemyManager, scope: Scope) -> Position:
    """The position of a row of ``scope``'s executions nine tenths down its list (where an
    offset would read and drop every row above it)."""

    async def pick() -> Position:
        async with database.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT created_at, id FROM executions WHERE account_id = :account "
                        "ORDER BY created_at, id OFFSET (SELECT count(*) * 9 / 10 FROM "
                        "executions WHERE account_id = :account) LIMIT 1"
                    ),
                    {"account": scope.account_id},
                )
            ).one()
            return row[0], row[1]

    position: Position = run(database, pick())
    return position


def tenant_and_execution(database: SQLAlchemyManager) -> tuple[Scope, uuid.UUID, uuid.UUID]:
    async def pick() -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        async with database.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT account_id, team_id, id FROM executions ORDER BY created_at LIMIT 1"
                    )
                )
            ).one()
            return row[0], row[1], row[2]

    account, team, execution = run(database, pick())
    return Scope(account), team, execution


READS: dict[
    str, Callable[[Scope, uuid.UUID, uuid.UUID], Callable[[AsyncSession], Awaitable[object]]]
] = {
    "executions, a page": lambda scope, team, _: (
        lambda s: ExecutionRepository(s).page_filtered(
            scope, team_id=None, status=None, limit=50, offset=0
        )
    ),
    "executions of a team with a status": lambda scope, team, _: (
        lambda s: ExecutionRepository(s).page_filtered(
            scope, team_id=team, status="completed", limit=50, offset=0
        )
    ),
    "an execution's events": lambda scope, _, execution: (
        lambda s: ExecutionRepository(s).events(execution, after=0, limit=100)
    ),
    "an execution's steps": lambda scope, _, execution: (
        lambda s: ExecutionRepository(s).steps(execution)
    ),
    "an execution's messages": lambda scope, _, execution: (
        lambda s: MessageRepository(s).list(execution, after=0, limit=100, kind=None, agent_id=None)
    ),
    "usage by team, a tenant": lambda scope, _, __: (
        lambda s: LedgerRepository(s).totals(scope, "team", since=None, until=None)
    ),
    "usage by model, everyone's last day": lambda scope, _, __: (
        lambda s: LedgerRepository(s).totals(
            Scope(None), "model", since=datetime.now(UTC) - timedelta(days=1), until=None
        )
    ),
    "usage by team, a tenant's last 90 minutes": lambda scope, _, __: (
        lambda s: LedgerRepository(s).totals(
            scope, "team", since=datetime.now(UTC) - timedelta(minutes=90), until=None
        )
    ),
    "analytics summary, a tenant's month": lambda scope, _, __: (
        lambda s: figures.summary(s, scope, scope.account_id, last(days=30), top=5)
    ),
    "analytics summary, everyone's day": lambda scope, _, __: (
        lambda s: figures.summary(s, Scope(None), None, last(days=1), top=5)
    ),
    "analytics cost by day, everyone's year by model": lambda scope, _, __: (
        lambda s: figures.timeseries(
            s, Scope(None), None, last(days=365), metric="cost_usd", grain="day", group_by="model"
        )
    ),
    "analytics executions by hour, a tenant's week": lambda scope, _, __: (
        lambda s: figures.timeseries(
            s,
            scope,
            scope.account_id,
            last(days=7),
            metric="executions",
            grain="hour",
            group_by="status",
        )
    ),
}


def last(*, days: int) -> figures.Period:
    now = datetime.now(UTC)
    return figures.Period.of(now - timedelta(days=days), now)


@pytest.mark.parametrize("name", READS)
def test_a_read_uses_an_index_at_realistic_volumes(database: SQLAlchemyManager, name: str) -> None:
    scope, team, execution = tenant_and_execution(database)
    read = READS[name](scope, team, execution)
    assert run(database, check(database, read)) == {}


def test_the_guard_bites(database: SQLAlchemyManager) -> None:
    async def unindexed(session: AsyncSession) -> object:
        return (
            await session.execute(text("SELECT count(*) FROM executions WHERE prompt = 'x'"))
        ).all()

    found = run(database, check(database, unindexed))
    assert list(found.values()) == [[f"executions ({EXECUTIONS} rows)"]]


LIST_INDEX = "ix_executions_account_id_created_at_id"


def keyset_page(
    scope: Scope, after: Position, team: uuid.UUID | None = None, status: str | None = None
) -> Callable[[AsyncSession], Awaitable[object]]:
    return lambda s: ExecutionRepository(s).page_filtered(
        scope, team_id=team, status=status, limit=50, offset=0, after=after
    )


async def page_plan(
    database: SQLAlchemyManager, read: Callable[[AsyncSession], Awaitable[object]], *before: str
) -> list[dict[str, Any]]:
    """The plan nodes of the statement reading the page's rows (the last ``read`` issues),
    explained after the statements ``before`` in one transaction, rolled back."""
    statement, parameters = (await statements_of(database, read))[-1]
    async with database.engine.connect() as connection, connection.begin() as transaction:
        for change in before:
            await connection.execute(text(change))
        raw = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        await transaction.rollback()
    plan = raw.scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return list(plan_nodes(plan[0]["Plan"]))


def test_keyset_pages_of_executions_use_an_index(database: SQLAlchemyManager) -> None:
    scope, team, _ = tenant_and_execution(database)
    after = deep_position(database, scope)
    assert run(database, check(database, keyset_page(scope, after))) == {}
    assert run(database, check(database, keyset_page(scope, after, team, "completed"))) == {}


def test_a_keyset_page_reads_the_list_index_from_the_cursor(database: SQLAlchemyManager) -> None:
    """The rows come from the list's index in order, starting at the cursor: no sort, nothing
    read and dropped. Without that index the same page sorts the account's executions."""
    scope, _, _ = tenant_and_execution(database)
    read = keyset_page(scope, deep_position(database, scope))
    nodes = run(database, page_plan(database, read))
    assert [n["Node Type"] for n in nodes if n["Node Type"] == "Sort"] == []
    scans = [n for n in nodes if n.get("Index Name") == LIST_INDEX]
    assert scans, [(n["Node Type"], n.get("Index Name")) for n in nodes]
    assert "created_at" in scans[0].get("Index Cond", ""), scans[0]

    without = run(database, page_plan(database, read, f"DROP INDEX {LIST_INDEX}"))
    assert "Sort" in {n["Node Type"] for n in without}


DELIVERY_LOG_INDEX = "ix_deliveries_webhook_id_created_at"


def deep_delivery(database: SQLAlchemyManager) -> tuple[uuid.UUID, Position]:
    """A webhook and the position of a delivery nine tenths down its log (newest first)."""

    async def pick() -> tuple[uuid.UUID, Position]:
        async with database.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT webhook_id, created_at, id FROM deliveries WHERE webhook_id = "
                        "(SELECT id FROM webhooks ORDER BY created_at, id LIMIT 1) "
                        "ORDER BY created_at DESC, id DESC OFFSET :deep LIMIT 1"
                    ),
                    {"deep": DELIVERIES_PER_WEBHOOK * 9 // 10},
                )
            ).one()
            return row[0], (row[1], row[2])

    found: tuple[uuid.UUID, Position] = run(database, pick())
    return found


def delivery_page(
    webhook: uuid.UUID, after: Position | None, status: str | None = None
) -> Callable[[AsyncSession], Awaitable[object]]:
    return lambda s: DeliveryRepository(s).page_for_webhook(
        webhook, status=status, limit=50, offset=0, after=after
    )


def test_a_webhook_s_delivery_log_uses_an_index(database: SQLAlchemyManager) -> None:
    webhook, after = deep_delivery(database)
    for read in (
        delivery_page(webhook, None),
        delivery_page(webhook, after),
        delivery_page(webhook, after, "dead"),
    ):
        assert run(database, check(database, read)) == {}
    nodes = run(database, page_plan(database, delivery_page(webhook, after)))
    assert [n["Node Type"] for n in nodes if n["Node Type"] == "Sort"] == []
    scans = [n for n in nodes if n.get("Index Name") == DELIVERY_LOG_INDEX]
    assert scans, [(n["Node Type"], n.get("Index Name")) for n in nodes]
