"""Usage totals from the cost ledger: its rows, plus the daily totals the retention purge
folded the rows it removed into (``ledger_daily_totals``), so a purge leaves the figures as
they were.

A folded row keeps its day, not its instant: in a period, a day's totals count when the day
starts inside it (``from <= day 00:00 UTC < to``). Periods that start and end at midnight UTC
(or are open) therefore report exactly what they reported before the purge; a period that
starts or ends within a folded day counts that whole day, or none of it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LedgerDailyTotal, LedgerEntry
from app.repositories.base import Scope

GROUP_COLUMNS = {
    "team": LedgerEntry.team_id,
    "agent": LedgerEntry.agent_id,
    "user": LedgerEntry.user_id,
    "model": LedgerEntry.model,
    "paid_by": LedgerEntry.paid_by,
}
TOTAL_COLUMNS = {
    "team": LedgerDailyTotal.team_id,
    "agent": LedgerDailyTotal.agent_id,
    "user": LedgerDailyTotal.user_id,
    "model": LedgerDailyTotal.model,
    "paid_by": LedgerDailyTotal.paid_by,
}


def first_day_from(moment: datetime) -> date | None:
    """The first day whose start (00:00 UTC) is at or after ``moment`` (None: no day left
    after the calendar's last one starts)."""
    moment = moment.astimezone(UTC)
    day = moment.date()
    if moment.time() == time(0):
        return day
    return None if day == date.max else day + timedelta(days=1)


def day_window(since: datetime | None, until: datetime | None) -> tuple[date | None, date | None]:
    """The days whose start falls in ``[since, until)``, as ``[first, end)`` (None: open)."""
    first = None if since is None else first_day_from(since)
    end = None if until is None else first_day_from(until)
    if since is not None and first is None:
        # No day starts in the window: an empty one.
        return date.max, date.max
    return first, end


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
        """Calls, tokens and cost per ``group_by`` key: the ledger's rows in ``[since,
        until)`` plus the daily totals of the days starting in it."""
        column = GROUP_COLUMNS[group_by]
        rows = scope.apply(
            select(
                column.label("key"),
                func.count(LedgerEntry.id).label("calls"),
                func.sum(LedgerEntry.input_tokens).label("input_tokens"),
                func.sum(LedgerEntry.output_tokens).label("output_tokens"),
                func.sum(LedgerEntry.cost_usd).label("cost_usd"),
            ),
            LedgerEntry.account_id,
        )
        if since is not None:
            rows = rows.where(LedgerEntry.created_at >= since)
        if until is not None:
            rows = rows.where(LedgerEntry.created_at < until)
        total_column = TOTAL_COLUMNS[group_by]
        folded = scope.apply(
            select(
                total_column.label("key"),
                func.sum(LedgerDailyTotal.calls).label("calls"),
                func.sum(LedgerDailyTotal.input_tokens).label("input_tokens"),
                func.sum(LedgerDailyTotal.output_tokens).label("output_tokens"),
                func.sum(LedgerDailyTotal.cost_usd).label("cost_usd"),
            ),
            LedgerDailyTotal.account_id,
        )
        first, end = day_window(since, until)
        if first is not None:
            folded = folded.where(LedgerDailyTotal.day >= first)
        if end is not None:
            folded = folded.where(LedgerDailyTotal.day < end)
        both = union_all(rows.group_by(column), folded.group_by(total_column)).subquery()
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
        ]
