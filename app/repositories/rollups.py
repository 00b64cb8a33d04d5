"""The rollups' statements: folding ended executions and their model calls into the hourly and
daily rollups (``app.models.rollup``), moving a purged call's figures to its day, and
rebuilding every rollup from the raw rows.

The invariant every statement here keeps (the property suite checks it):

- a usage rollup of an hour holds the model calls of that hour already rolled up
  (``ledger_entries.rolled_up``), plus, for the day's first hour (00:00 UTC), the daily totals
  of that day's purged calls (``ledger_daily_totals``); a usage rollup of a day holds that
  day's rolled-up calls plus its daily totals;
- an execution rollup of an hour or day holds the executions rolled up that ended in it.

A fold is one transaction: it marks a bounded batch of rows rolled up with ``UPDATE ... WHERE
NOT rolled_up ... RETURNING`` and adds exactly what that UPDATE returned, so two processes
folding at once never add a row twice (on PostgreSQL the batch is also taken ``FOR UPDATE SKIP
LOCKED``: the second process takes other rows instead of waiting). Works on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, delete, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models import Execution, ExecutionStatus, LedgerDailyTotal, LedgerEntry
from app.models.rollup import ExecutionRollup, Grain, UsageRollup, rollup_id
from app.repositories.base import table_of

TERMINAL = tuple(status.value for status in ExecutionStatus if status.terminal)

_executions = table_of(Execution)
_ledger = table_of(LedgerEntry)
_totals = table_of(LedgerDailyTotal)
_usage = table_of(UsageRollup)
_execution_rollups = table_of(ExecutionRollup)

USAGE_KEY = ("account_id", "team_id", "agent_id", "user_id", "provider", "model", "paid_by")
USAGE_MEASURES = ("calls", "input_tokens", "output_tokens", "cost_usd", "duration_ms")
EXECUTION_KEY = ("account_id", "team_id", "strategy", "status")
EXECUTION_MEASURES = ("executions", "duration_ms", "input_tokens", "output_tokens", "cost_usd")


def hour_of(moment: datetime) -> datetime:
    """The start of ``moment``'s UTC hour."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    """The start of ``moment``'s UTC day."""
    return datetime.combine(moment.astimezone(UTC).date(), time(0), tzinfo=UTC)


def bucket_of(grain: str, moment: datetime) -> datetime:
    return hour_of(moment) if grain == Grain.hour else day_of(moment)


class Sums:
    """Contributions to rollup rows, summed per row id before one upsert per row."""

    def __init__(self, table: Table, key: Sequence[str], measures: Sequence[str]) -> None:
        self.table = table
        self.key = key
        self.measures = measures
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}

    def add(
        self,
        grain: str,
        bucket: datetime,
        key: dict[str, Any],
        measures: dict[str, Any],
        sign: int = 1,
    ) -> None:
        parts = [key[name] for name in self.key]
        ident = rollup_id(self.table.name, grain, bucket, *parts)
        row = self.rows.get(ident)
        if row is None:
            row = self.rows[ident] = {"id": ident, "grain": grain, "bucket": bucket, **key}
            row.update(dict.fromkeys(self.measures, 0))
        for name in self.measures:
            row[name] += sign * measures[name]

    async def write(self, conn: AsyncConnection) -> None:
        """Add every row into its rollup: one upsert per row, in id order (the order the
        upserts lock them in, so concurrent writers cannot deadlock)."""
        if not self.rows:
            return
        insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        statement = insert(self.table)
        statement = statement.on_conflict_do_update(
            index_elements=[self.table.c.id],
            set_={name: self.table.c[name] + statement.excluded[name] for name in self.measures},
        )
        await conn.execute(statement, [self.rows[ident] for ident in sorted(self.rows)])


def usage_sums() -> Sums:
    return Sums(_usage, USAGE_KEY, USAGE_MEASURES)


def execution_sums() -> Sums:
    return Sums(_execution_rollups, EXECUTION_KEY, EXECUTION_MEASURES)


def _call_measures(row: Any) -> dict[str, Any]:
    return {
        "calls": 1,
        "input_tokens": int(row.input_tokens),
        "output_tokens": int(row.output_tokens),
        "cost_usd": Decimal(row.cost_usd),
        "duration_ms": int(row.duration_ms),
    }


def _key(row: Any, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def add_calls(sums: Sums, rows: Iterable[Any], sign: int = 1) -> None:
    """Model calls (ledger rows) into their hour's and their day's rollups."""
    for row in rows:
        key, measures = _key(row, USAGE_KEY), _call_measures(row)
        for grain in Grain:
            sums.add(grain, bucket_of(grain, row.created_at), key, measures, sign)


def add_purged_calls(sums: Sums, rows: Iterable[Any]) -> None:
    """Ledger rows the retention purge removed: each now counts as part of its day's total,
    which the invariant keeps in the day's first hour. A rolled-up row moves from its hour to
    that one (its day is unchanged); a row not rolled up yet is added there and to its day."""
    for row in rows:
        key, measures = _key(row, USAGE_KEY), _call_measures(row)
        sums.add(Grain.hour, day_of(row.created_at), key, measures)
        if row.rolled_up:
            sums.add(Grain.hour, hour_of(row.created_at), key, measures, -1)
        else:
            sums.add(Grain.day, day_of(row.created_at), key, measures)


def add_daily_totals(sums: Sums, totals: Iterable[Any]) -> None:
    """Daily totals of purged calls into their day's first hour and their day."""
    for total in totals:
        bucket = datetime.combine(total.day, time(0), tzinfo=UTC)
        key = _key(total, USAGE_KEY)
        measures = {name: getattr(total, name) for name in USAGE_MEASURES}
        for grain in Grain:
            sums.add(grain, bucket, key, measures)


def ended_at(row: Any) -> datetime:
    """When an execution ended: its finish time (its last update for one that ended without
    one: never the case for executions the engine ended)."""
    moment: datetime = row.finished_at or row.updated_at
    return moment


def add_executions(sums: Sums, rows: Iterable[Any]) -> None:
    """Ended executions into the hour and the day they ended in."""
    for row in rows:
        end = ended_at(row)
        start = row.started_at
        duration = 0 if start is None else max(0, round((end - start) / timedelta(milliseconds=1)))
        strategy = row.workflow.get("strategy") if isinstance(row.workflow, dict) else None
        key = {
            "account_id": row.account_id,
            "team_id": row.team_id,
            "strategy": str(strategy or "sequential")[:32],
            "status": row.status,
        }
        measures = {
            "executions": 1,
            "duration_ms": duration,
            "input_tokens": int(row.input_tokens),
            "output_tokens": int(row.output_tokens),
            "cost_usd": Decimal(row.cost_usd),
        }
        for grain in Grain:
            sums.add(grain, bucket_of(grain, end), key, measures)


# -- folding --------------------------------------------------------------------------------------

CALL_FIELDS = (*USAGE_KEY, "input_tokens", "output_tokens", "cost_usd", "duration_ms")
EXECUTION_FIELDS = (
    "account_id",
    "team_id",
    "workflow",
    "status",
    "started_at",
    "finished_at",
    "updated_at",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)


async def take_rollups(conn: AsyncConnection, *, exclusive: bool = False) -> None:
    """On PostgreSQL, lock the rollup tables before anything else in a transaction that writes
    them: shared among folds and purges (``ROW EXCLUSIVE``, what their upserts take anyway, but
    taken first), alone for a rebuild (``EXCLUSIVE``: in-flight folds finish first, later ones
    wait for it). Always in the same order, so a rebuild and a fold cannot deadlock. SQLite
    runs one writer at a time already."""
    if conn.dialect.name != "postgresql":
        return
    mode = "EXCLUSIVE" if exclusive else "ROW EXCLUSIVE"
    await conn.execute(text(f"LOCK TABLE usage_rollups, execution_rollups IN {mode} MODE"))


def _batch(conn: AsyncConnection, query: Any, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=table)
    return query


async def fold_calls(conn: AsyncConnection, limit: int) -> list[uuid.UUID]:
    """Roll up to ``limit`` model calls whose execution ended (or was deleted with its team);
    returns the account of each call this transaction rolled up."""
    await take_rollups(conn)
    query = (
        select(_ledger.c.id)
        .select_from(_ledger.outerjoin(_executions, _ledger.c.execution_id == _executions.c.id))
        .where(
            ~_ledger.c.rolled_up,
            or_(_ledger.c.execution_id.is_(None), _executions.c.status.in_(TERMINAL)),
        )
        .limit(limit)
    )
    ids = list((await conn.execute(_batch(conn, query, _ledger))).scalars())
    if not ids:
        return []
    marked = await conn.execute(
        update(_ledger)
        .where(_ledger.c.id.in_(ids), ~_ledger.c.rolled_up)
        .values(rolled_up=True)
        .returning(*(_ledger.c[name] for name in (*CALL_FIELDS, "created_at")))
    )
    rows = marked.all()
    sums = usage_sums()
    add_calls(sums, rows)
    await sums.write(conn)
    return [row.account_id for row in rows]


async def fold_executions(conn: AsyncConnection, limit: int) -> list[uuid.UUID]:
    """Roll up to ``limit`` ended executions; returns the account of each execution this
    transaction rolled up."""
    await take_rollups(conn)
    query = (
        select(_executions.c.id)
        .where(~_executions.c.rolled_up, _executions.c.status.in_(TERMINAL))
        .limit(limit)
    )
    ids = list((await conn.execute(_batch(conn, query, _executions))).scalars())
    if not ids:
        return []
    marked = await conn.execute(
        update(_executions)
        .where(
            _executions.c.id.in_(ids),
            ~_executions.c.rolled_up,
            _executions.c.status.in_(TERMINAL),
        )
        # Rolling up is not a change of the execution: its update time stays.
        .values(rolled_up=True, updated_at=_executions.c.updated_at)
        .returning(*(_executions.c[name] for name in EXECUTION_FIELDS))
    )
    rows = marked.all()
    sums = execution_sums()
    add_executions(sums, rows)
    await sums.write(conn)
    return [row.account_id for row in rows]


# -- rebuilding -----------------------------------------------------------------------------------

PAGE = 5000  # daily totals read at a time


async def clear(conn: AsyncConnection) -> None:
    """Empty every rollup and mark every raw row as not rolled up (the first step of a
    rebuild, in the same transaction as the folds that follow)."""
    await take_rollups(conn, exclusive=True)
    await conn.execute(delete(_usage))
    await conn.execute(delete(_execution_rollups))
    await conn.execute(update(_ledger).where(_ledger.c.rolled_up).values(rolled_up=False))
    await conn.execute(
        update(_executions)
        .where(_executions.c.rolled_up)
        .values(rolled_up=False, updated_at=_executions.c.updated_at)
    )
    after: uuid.UUID | None = None
    while True:
        page = select(_totals).order_by(_totals.c.id).limit(PAGE)
        if after is not None:
            page = page.where(_totals.c.id > after)
        totals = (await conn.execute(page)).all()
        if not totals:
            return
        sums = usage_sums()
        add_daily_totals(sums, totals)
        await sums.write(conn)
        after = totals[-1].id
