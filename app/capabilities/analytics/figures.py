"""The analytics figures, read from the rollups (``app.models.rollup``) only: a year of one
account is a few hundred rows, never its raw calls.

A period is whole hours: from ``from`` rounded down to its hour, every hour that starts before
``to``. Its whole days are read from the daily rollups, the hours at either end from the hourly
ones. Figures are those of ended executions and of their model calls, rolled up within seconds
of the end (``app.services.rollups``); running executions count once they end.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, desc, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Agent, Team
from app.models.rollup import ExecutionRollup, Grain, UsageRollup
from app.repositories.base import Scope
from app.repositories.rollups import day_of, hour_of

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

USAGE_METRICS: dict[str, Any] = {
    "calls": UsageRollup.calls,
    "input_tokens": UsageRollup.input_tokens,
    "output_tokens": UsageRollup.output_tokens,
    "cost_usd": UsageRollup.cost_usd,
}
EXECUTION_METRICS = {"executions", "failed_executions"}
LATENCY = "latency_ms"
METRICS = (*USAGE_METRICS, *EXECUTION_METRICS, LATENCY)
USAGE_GROUPS = {
    "team": UsageRollup.team_id,
    "agent": UsageRollup.agent_id,
    "user": UsageRollup.user_id,
    "provider": UsageRollup.provider,
    "model": UsageRollup.model,
    "paid_by": UsageRollup.paid_by,
}
EXECUTION_GROUPS = {
    "team": ExecutionRollup.team_id,
    "strategy": ExecutionRollup.strategy,
    "status": ExecutionRollup.status,
}
FAILED = ("failed",)


# A moment's hour and day: the buckets the rollups file it under.
floor_hour, floor_day = hour_of, day_of


def ceil_hour(moment: datetime) -> datetime:
    start = floor_hour(moment)
    return start if start == moment else start + HOUR


def ceil_day(moment: datetime) -> datetime:
    start = floor_day(moment)
    return start if start == moment else start + DAY


@dataclass(frozen=True)
class Period:
    """Whole hours ``[start, end)``."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, since: datetime, until: datetime) -> Period:
        start = floor_hour(since)
        return cls(start, max(start, ceil_hour(until)))

    def pieces(self) -> list[tuple[str, datetime, datetime]]:
        """The grain and range of buckets that cover the period: its whole days from the daily
        rollups, the hours before the first and after the last from the hourly ones."""
        first_day, last_day = ceil_day(self.start), floor_day(self.end)
        if first_day >= last_day:
            return [(Grain.hour, self.start, self.end)]
        pieces: list[tuple[str, datetime, datetime]] = [(Grain.day, first_day, last_day)]
        if self.start < first_day:
            pieces.insert(0, (Grain.hour, self.start, first_day))
        if last_day < self.end:
            pieces.append((Grain.hour, last_day, self.end))
        return pieces

    def condition(self, model: Any) -> Any:
        return or_(
            *(
                and_(model.grain == grain, model.bucket >= start, model.bucket < end)
                for grain, start, end in self.pieces()
            )
        )

    def buckets(self, grain: str) -> list[datetime]:
        """Every bucket of ``grain`` the period touches, in order."""
        step = HOUR if grain == Grain.hour else DAY
        at = self.start if grain == Grain.hour else floor_day(self.start)
        found = []
        while at < self.end:
            found.append(at)
            at += step
        return found

    def count(self, grain: str) -> int:
        if grain == Grain.hour:
            return int((self.end - self.start) / HOUR)
        return int((ceil_day(self.end) - floor_day(self.start)) / DAY)


def _scoped(scope: Scope, query: Any, model: Any, account: uuid.UUID | None) -> Any:
    query = scope.apply(query, model.account_id)
    if account is not None:
        query = query.where(model.account_id == account)
    return query


@dataclass
class Summary:
    executions: dict[str, tuple[int, int]]  # status -> (executions, summed run time in ms)
    usage: dict[str, tuple[int, int, int, Decimal]]  # paid_by -> calls, tokens in/out, cost
    top_teams: list[tuple[Any, str | None, int, Decimal]]  # id, name, calls, cost
    top_agents: list[tuple[Any, str | None, int, Decimal]]
    models: list[tuple[str, str, int, Decimal, int]]  # provider, model, calls, cost, latency
    active_accounts: int
    active_users: int


async def summary(
    session: AsyncSession, scope: Scope, account: uuid.UUID | None, period: Period, top: int
) -> Summary:
    def usage_query(*columns: Any) -> Any:
        query = select(*columns).where(period.condition(UsageRollup))
        return _scoped(scope, query, UsageRollup, account)

    executions = _scoped(
        scope,
        select(
            ExecutionRollup.status,
            func.sum(ExecutionRollup.executions),
            func.sum(ExecutionRollup.duration_ms),
        )
        .where(period.condition(ExecutionRollup))
        .group_by(ExecutionRollup.status),
        ExecutionRollup,
        account,
    )
    by_status = {
        status: (int(count), int(duration))
        for status, count, duration in await session.execute(executions)
    }
    cost = func.sum(UsageRollup.cost_usd)
    calls = func.sum(UsageRollup.calls)
    usage = await session.execute(
        usage_query(
            UsageRollup.paid_by,
            calls,
            func.sum(UsageRollup.input_tokens),
            func.sum(UsageRollup.output_tokens),
            cost,
        ).group_by(UsageRollup.paid_by)
    )
    by_payer = {
        payer: (int(n), int(tokens_in), int(tokens_out), Decimal(str(spent)))
        for payer, n, tokens_in, tokens_out, spent in usage
    }

    async def top_by_cost(column: Any, named: Any) -> list[tuple[Any, str | None, int, Decimal]]:
        query = (
            usage_query(column, calls, cost)
            .where(column.is_not(None))
            .group_by(column)
            .order_by(desc(cost), column)
            .limit(top)
        )
        rows = (await session.execute(query)).all()
        ids = [row[0] for row in rows]
        names: dict[Any, str] = {}
        if ids:
            found = await session.execute(select(named.id, named.name).where(named.id.in_(ids)))
            names = {row.id: row.name for row in found}
        return [(key, names.get(key), int(n), Decimal(str(spent))) for key, n, spent in rows]

    models = await session.execute(
        usage_query(
            UsageRollup.provider,
            UsageRollup.model,
            calls,
            cost,
            func.sum(UsageRollup.duration_ms),
        )
        .group_by(UsageRollup.provider, UsageRollup.model)
        .order_by(desc(cost), UsageRollup.model)
    )
    active = await session.execute(
        usage_query(
            func.count(func.distinct(UsageRollup.account_id)),
            func.count(func.distinct(UsageRollup.user_id)),
        )
    )
    accounts, users = active.one()
    return Summary(
        executions=by_status,
        usage=by_payer,
        top_teams=await top_by_cost(UsageRollup.team_id, Team),
        top_agents=await top_by_cost(UsageRollup.agent_id, Agent),
        models=[
            (provider, model, int(n), Decimal(str(spent)), round(int(ms) / int(n)) if n else 0)
            for provider, model, n, spent, ms in models
        ],
        active_accounts=int(accounts or 0),
        active_users=int(users or 0),
    )


async def timeseries(
    session: AsyncSession,
    scope: Scope,
    account: uuid.UUID | None,
    period: Period,
    *,
    metric: str,
    grain: str,
    group_by: str | None,
) -> dict[str | None, dict[datetime, Decimal]]:
    """``metric`` per bucket of ``grain`` (and per ``group_by`` key; one series keyed None
    without), from the rollups of that grain; buckets without figures are absent."""
    if metric in EXECUTION_METRICS:
        model: Any = ExecutionRollup
        value = func.sum(ExecutionRollup.executions)
        key = EXECUTION_GROUPS[group_by] if group_by else None
    else:
        model = UsageRollup
        value = (
            func.sum(UsageRollup.duration_ms)
            if metric == LATENCY
            else func.sum(USAGE_METRICS[metric])
        )
        key = USAGE_GROUPS[group_by] if group_by else None
    columns = [model.bucket, value]
    if metric == LATENCY:
        columns.append(func.sum(UsageRollup.calls))
    if key is not None:
        columns.append(key)
    start = period.start if grain == Grain.hour else floor_day(period.start)
    query = select(*columns).where(
        model.grain == grain, model.bucket >= start, model.bucket < period.end
    )
    if metric == "failed_executions":
        query = query.where(ExecutionRollup.status.in_(FAILED))
    query = _scoped(scope, query, model, account).group_by(
        model.bucket, *([key] if key is not None else [])
    )
    series: dict[str | None, dict[datetime, Decimal]] = {}
    for row in await session.execute(query):
        bucket, total = row[0], row[1]
        if metric == LATENCY:
            calls = int(row[2] or 0)
            figure = Decimal(round(int(total) / calls)) if calls else Decimal(0)
        else:
            figure = Decimal(str(total))
        group = None if key is None else row[-1]
        series.setdefault(None if group is None else str(group), {})[bucket] = figure
    return series
