"""The retention purge's statements (``app.capabilities.database_manager.retention`` drives
them): which ended executions are old enough, deleting one bounded batch of one kind of their
rows, folding ledger rows into their daily totals as they go, and the counts of a dry run.

Each function runs on a connection inside a transaction its caller opened and commits; a
batch is one such transaction. Rows are selected by id with ``LIMIT`` and deleted by id with
``RETURNING``: what a batch reports (and folds) is what its ``DELETE`` removed, so a row that a
concurrent purge removed first is neither counted nor folded twice. Works on SQLite (3.35+)
and PostgreSQL alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models import (
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStatus,
    ExecutionStep,
    LedgerDailyTotal,
    LedgerEntry,
)
from app.models.ledger_total import total_id
from app.models.rollup import ExecutionRollup, Grain, UsageRollup
from app.repositories import rollups
from app.repositories.base import table_of

TERMINAL = tuple(status.value for status in ExecutionStatus if status.terminal)

# Ids bound in one statement at most (SQLite allows 32,766 parameters, asyncpg 32,767).
MAX_BOUND_IDS = 10_000


_executions = table_of(Execution)
_ledger = table_of(LedgerEntry)
_totals = table_of(LedgerDailyTotal)
_usage_rollups = table_of(UsageRollup)
_execution_rollups = table_of(ExecutionRollup)

# The kinds of rows an execution owns (besides ledger rows), by kind name, in purge order.
# Nothing refers to events, messages or context rows; ledger rows refer to steps
# (``step_id``, ON DELETE SET NULL), so steps go last, after the ledger rows of the same
# executions when those expire too.
EXECUTION_TABLES: dict[str, Table] = {
    "events": table_of(ExecutionEvent),
    "messages": table_of(ExecutionMessage),
    "context": table_of(ContextEntry),
    "steps": table_of(ExecutionStep),
}

# When an execution ended: its finish time, or its last update for one that ended without
# one (never the case for executions the engine ended; a safeguard).
ended_at = func.coalesce(_executions.c.finished_at, _executions.c.updated_at)
_ended = _executions.c.status.in_(TERMINAL)


@dataclass(frozen=True)
class EndedExecution:
    id: uuid.UUID
    ended_at: datetime


async def ended_executions(
    conn: AsyncConnection, before: datetime, after: uuid.UUID | None, limit: int
) -> list[EndedExecution]:
    """Up to ``limit`` executions in a terminal status that ended before ``before``, by id,
    after ``after`` (a keyset page: each is visited once per round)."""
    query = select(_executions.c.id, ended_at.label("ended_at")).where(_ended, ended_at < before)
    if after is not None:
        query = query.where(_executions.c.id > after)
    rows = await conn.execute(query.order_by(_executions.c.id).limit(limit))
    return [EndedExecution(row.id, row.ended_at) for row in rows]


def _chunks(ids: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(ids), MAX_BOUND_IDS):
        yield ids[start : start + MAX_BOUND_IDS]


async def _delete_ids(conn: AsyncConnection, table: Table, ids: Sequence[Any]) -> int:
    removed = 0
    for chunk in _chunks(ids):
        result = await conn.execute(
            delete(table).where(table.c.id.in_(chunk)).returning(table.c.id)
        )
        removed += len(result.all())
    return removed


@dataclass(frozen=True)
class Batch:
    """One batch's outcome: rows selected (``limit`` of them: there may be more) and rows its
    DELETE removed (fewer when a concurrent purge removed some first)."""

    selected: int
    removed: int


async def purge_execution_rows(
    conn: AsyncConnection, kind: str, execution_ids: Sequence[uuid.UUID], limit: int
) -> Batch:
    """Delete up to ``limit`` rows of ``kind`` (events, messages, context, steps) of these
    executions."""
    table = EXECUTION_TABLES[kind]
    found = (
        await conn.execute(
            select(table.c.id)
            .where(table.c.execution_id.in_(execution_ids))
            .order_by(table.c.id)
            .limit(limit)
        )
    ).scalars()
    ids = list(found)
    if not ids:
        return Batch(0, 0)
    return Batch(len(ids), await _delete_ids(conn, table, ids))


# -- the ledger ---------------------------------------------------------------------------------

_FOLDED = (
    _ledger.c.account_id,
    _ledger.c.team_id,
    _ledger.c.agent_id,
    _ledger.c.user_id,
    _ledger.c.provider,
    _ledger.c.model,
    _ledger.c.paid_by,
    _ledger.c.input_tokens,
    _ledger.c.output_tokens,
    _ledger.c.cost_usd,
    _ledger.c.duration_ms,
    _ledger.c.created_at,
    _ledger.c.rolled_up,
)


@dataclass
class DailyTotal:
    """One day's total of one key, as ``ledger_daily_totals`` holds it."""

    id: uuid.UUID
    account_id: uuid.UUID
    day: date
    team_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    user_id: uuid.UUID | None
    provider: str
    model: str
    paid_by: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    duration_ms: int = 0

    def values(self) -> dict[str, Any]:
        return {column.name: getattr(self, column.name) for column in _totals.columns}


def fold(rows: Iterable[Any]) -> list[DailyTotal]:
    """Ledger rows (with the ``_FOLDED`` fields) summed per account, UTC day of the call and
    usage key; in id order (the order the upserts lock them in)."""
    totals: dict[uuid.UUID, DailyTotal] = {}
    for row in rows:
        day = row.created_at.astimezone(UTC).date()
        key = (
            row.account_id,
            day,
            row.team_id,
            row.agent_id,
            row.user_id,
            row.provider,
            row.model,
            row.paid_by,
        )
        ident = total_id(*key)
        total = totals.get(ident)
        if total is None:
            total = totals[ident] = DailyTotal(ident, *key)
        total.calls += 1
        total.input_tokens += int(row.input_tokens)
        total.output_tokens += int(row.output_tokens)
        total.cost_usd += Decimal(row.cost_usd)
        total.duration_ms += int(row.duration_ms)
    return [totals[ident] for ident in sorted(totals)]


async def add_totals(conn: AsyncConnection, totals: Sequence[DailyTotal]) -> None:
    """Add ``totals`` into ``ledger_daily_totals``: one upsert per key (its id), creating the
    row or adding to it (``INSERT ... ON CONFLICT (id) DO UPDATE``)."""
    if not totals:
        return
    insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(_totals)
    statement = statement.on_conflict_do_update(
        index_elements=[_totals.c.id],
        set_={
            name: _totals.c[name] + statement.excluded[name]
            for name in ("calls", "input_tokens", "output_tokens", "cost_usd", "duration_ms")
        },
    )
    await conn.execute(statement, [total.values() for total in totals])


async def _fold_ledger_ids(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> int:
    """Delete these ledger rows and add what the DELETE removed to the daily totals, and move
    it to its day in the rollups, in the caller's transaction: a row is folded exactly when it
    is deleted."""
    await rollups.take_rollups(conn)
    removed: list[Any] = []
    for chunk in _chunks(ids):
        result = await conn.execute(
            delete(_ledger).where(_ledger.c.id.in_(chunk)).returning(*_FOLDED)
        )
        removed.extend(result.all())
    await add_totals(conn, fold(removed))
    sums = rollups.usage_sums()
    rollups.add_purged_calls(sums, removed)
    await sums.write(conn)
    return len(removed)


async def _purge_ledger_where(conn: AsyncConnection, limit: int, *conditions: Any) -> Batch:
    """Fold and delete up to ``limit`` ledger rows matching ``conditions``, oldest ids first."""
    query = select(_ledger.c.id).where(*conditions).order_by(_ledger.c.id).limit(limit)
    ids = list((await conn.execute(query)).scalars())
    if not ids:
        return Batch(0, 0)
    return Batch(len(ids), await _fold_ledger_ids(conn, ids))


async def purge_ledger_rows(
    conn: AsyncConnection, execution_ids: Sequence[uuid.UUID], limit: int
) -> Batch:
    """Fold and delete up to ``limit`` ledger rows of these executions."""
    return await _purge_ledger_where(conn, limit, _ledger.c.execution_id.in_(execution_ids))


_orphans = _ledger.c.execution_id.is_(None)


async def purge_orphan_ledger_rows(conn: AsyncConnection, before: datetime, limit: int) -> Batch:
    """Fold and delete up to ``limit`` ledger rows whose execution is gone (its team was
    deleted) recorded before ``before``."""
    return await _purge_ledger_where(conn, limit, _orphans, _ledger.c.created_at < before)


def _rollup_tables(before: date) -> list[tuple[Table, Any]]:
    """Each table of figures of days before ``before``, with the condition that selects them:
    the daily totals of purged calls, and the usage and execution rollups."""
    start = datetime.combine(before, time(0), tzinfo=UTC)
    return [
        (_totals, _totals.c.day < before),
        *((table, table.c.bucket < start) for table in (_usage_rollups, _execution_rollups)),
    ]


async def purge_rollups(conn: AsyncConnection, before: date, limit: int) -> Batch:
    """Delete up to ``limit`` rows of the figures of days before ``before``, in all: daily
    totals first, then usage and execution rollups (a batch selects fewer than ``limit`` only
    when none is left in any of them)."""
    selected = removed = 0
    for table, condition in _rollup_tables(before):
        if selected >= limit:
            break
        query = select(table.c.id).where(condition).order_by(table.c.id).limit(limit - selected)
        ids = list((await conn.execute(query)).scalars())
        if ids:
            selected += len(ids)
            removed += await _delete_ids(conn, table, ids)
    return Batch(selected, removed)


# -- what a dry run reports, and what is left -----------------------------------------------------


async def count_execution_rows(conn: AsyncConnection, kind: str, before: datetime) -> int:
    """Rows of ``kind`` (events, messages, context, steps, ledger) of executions that ended
    before ``before``; for the ledger, with the rows of deleted executions recorded before
    it."""
    table = _ledger if kind == "ledger" else EXECUTION_TABLES[kind]
    query = (
        select(func.count())
        .select_from(table.join(_executions, table.c.execution_id == _executions.c.id))
        .where(_ended, ended_at < before)
    )
    count = int((await conn.execute(query)).scalar_one())
    if kind == "ledger":
        orphans = select(func.count()).where(_orphans, _ledger.c.created_at < before)
        count += int((await conn.execute(orphans.select_from(_ledger))).scalar_one())
    return count


async def count_rollups(conn: AsyncConnection, before: date) -> int:
    count = 0
    for table, condition in _rollup_tables(before):
        query = select(func.count()).select_from(table).where(condition)
        count += int((await conn.execute(query)).scalar_one())
    return count


async def oldest_ledger_row(conn: AsyncConnection) -> datetime | None:
    """When the oldest ledger row left was recorded (an index's first entry)."""
    found: datetime | None = (
        await conn.execute(select(func.min(_ledger.c.created_at)))
    ).scalar_one()
    return found


async def oldest_rollup(conn: AsyncConnection) -> date | None:
    """The oldest day with a daily total or a daily usage rollup left (indexes' first
    entries)."""
    total: date | None = (await conn.execute(select(func.min(_totals.c.day)))).scalar_one()
    bucket: datetime | None = (
        await conn.execute(
            select(func.min(_usage_rollups.c.bucket)).where(_usage_rollups.c.grain == Grain.day)
        )
    ).scalar_one()
    days = [d for d in (total, None if bucket is None else bucket.date()) if d is not None]
    return min(days, default=None)
