"""Usage totals of model calls, read from the hourly rollups (``app.models.rollup``) for the
whole hours of a period, and from the ledger's rows for the rest: the calls not rolled up yet
(of executions still running, or that just ended) and the calls in the partial hours at either
end of the period. The figures are exactly those of the ledger's rows in ``[from, to)``.

Calls the retention purge removed count by their day (they were folded into their day's total,
``ledger_daily_totals``, which the rollups hold in the day's first hour): a day's purged calls
count when the day starts inside the period (``from <= day 00:00 UTC < to``). Periods that
start and end at midnight UTC (or are open) therefore report exactly what they reported before
the purge; a period that starts or ends within a purged day counts all of that day's purged
calls, or none of them.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LedgerDailyTotal, LedgerEntry
from app.models.rollup import Grain, UsageRollup
from app.repositories.base import Scope

GROUP_COLUMNS = {
    "team": LedgerEntry.team_id,
    "agent": LedgerEntry.agent_id,
    "user": LedgerEntry.user_id,
    "model": LedgerEntry.model,
    "paid_by": LedgerEntry.paid_by,
}
ROLLUP_COLUMNS = {
    "team": UsageRollup.team_id,
    "agent": UsageRollup.agent_id,
    "user": UsageRollup.user_id,
    "model": UsageRollup.model,
    "paid_by": UsageRollup.paid_by,
}
TOTAL_COLUMNS = {
    "team": LedgerDailyTotal.team_id,
    "agent": LedgerDailyTotal.agent_id,
    "user": LedgerDailyTotal.user_id,
    "model": LedgerDailyTotal.model,
    "paid_by": LedgerDailyTotal.paid_by,
}

Range = tuple[datetime | None, datetime | None]  # [start, end); None: open


def hour_start_from(moment: datetime) -> datetime | None:
    """The first hour whose start is at or after ``moment`` (None: no hour left after the
    calendar's last one starts)."""
    moment = moment.astimezone(UTC)
    start = moment.replace(minute=0, second=0, microsecond=0)
    if start == moment:
        return start
    try:
        return start + timedelta(hours=1)
    except OverflowError:
        return None


def hour_window(since: datetime | None, until: datetime | None) -> tuple[Range | None, list[Range]]:
    """Split ``[since, until)`` into its whole hours (None: none) and the partial hours at
    either end (the ranges read from the ledger's rows)."""
    since, until = (None if t is None else t.astimezone(UTC) for t in (since, until))
    first = None if since is None else hour_start_from(since)
    last = None if until is None else until.replace(minute=0, second=0, microsecond=0)
    if since is not None and (first is None or (last is not None and first > last)):
        return None, [(since, until)]  # no hour starts inside the period
    edges: list[Range] = []
    if since is not None and first is not None and since < first:
        edges.append((since, first))
    if until is not None and last is not None and last < until:
        edges.append((last, until))
    return (first, last), edges


def _within(column: Any, window: Range) -> list[Any]:
    start, end = window
    return [
        *(() if start is None else (column >= start,)),
        *(() if end is None else (column < end,)),
    ]


def _sums(key: Any, calls: Any, table: Any) -> Any:
    return select(
        key.label("key"),
        calls.label("calls"),
        func.sum(table.input_tokens).label("input_tokens"),
        func.sum(table.output_tokens).label("output_tokens"),
        func.sum(table.cost_usd).label("cost_usd"),
    )


class LedgerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def totals(
        self,
        scope: Scope,
        group_by: str,
        *,
        since: datetime | None,
        until: datetime | None,
    ) -> list[tuple[Any, int, int, int, Any]]:
        """Calls, tokens and cost per ``group_by`` key of the calls in ``[since, until)``
        (purged calls by their day, as the module says)."""
        whole, edges = hour_window(since, until)
        column, rollup_column = GROUP_COLUMNS[group_by], ROLLUP_COLUMNS[group_by]
        parts = []
        if whole is not None:
            rolled = scope.apply(
                _sums(rollup_column, func.sum(UsageRollup.calls), UsageRollup),
                UsageRollup.account_id,
            ).where(UsageRollup.grain == Grain.hour, *_within(UsageRollup.bucket, whole))
            fresh = scope.apply(
                _sums(column, func.count(LedgerEntry.id), LedgerEntry), LedgerEntry.account_id
            ).where(~LedgerEntry.rolled_up, *_within(LedgerEntry.created_at, whole))
            parts += [rolled.group_by(rollup_column), fresh.group_by(column)]
        if edges:
            in_edges = or_(*(and_(*_within(LedgerEntry.created_at, edge)) for edge in edges))
            partial = scope.apply(
                _sums(column, func.count(LedgerEntry.id), LedgerEntry), LedgerEntry.account_id
            ).where(in_edges)
            parts.append(partial.group_by(column))
        # Purged calls of a day whose first hour is partial and starts in the period.
        days = [start.date() for start, _ in edges if start and start.time() == time(0)]
        if days:
            total_column = TOTAL_COLUMNS[group_by]
            purged = scope.apply(
                _sums(total_column, func.sum(LedgerDailyTotal.calls), LedgerDailyTotal),
                LedgerDailyTotal.account_id,
            ).where(LedgerDailyTotal.day.in_(days))
            parts.append(purged.group_by(total_column))
        both = union_all(*parts).subquery()
        query = (
            select(
                both.c.key,
                func.sum(both.c.calls),
                func.coalesce(func.sum(both.c.input_tokens), 0),
                func.coalesce(func.sum(both.c.output_tokens), 0),
                func.coalesce(func.sum(both.c.cost_usd), 0),
            )
            .group_by(both.c.key)
            .order_by(both.c.key)
        )
        result = await self.session.execute(query)
        return [
            (key, int(calls), int(inputs), int(outputs), cost)
            for key, calls, inputs, outputs, cost in result
            if calls
        ]
