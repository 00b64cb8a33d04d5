"""`/api/v1/analytics/*`: business figures from the rollups. Account owners see their account;
platform admins every account, or one with `account_id`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from app.api.deps import OwnerDep, RuntimeDep, SessionDep, SettingsDep
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.capabilities.analytics import figures
from app.core.errors import Forbidden, ValidationFailed
from app.schemas.common import DateTime, Money, problems
from app.services.principal import Principal

router = PrefixRouter(prefix="/api/v1/analytics", tags=["analytics"], dependencies=[CheckInputs])

DEFAULT_DAYS = 30

Since = Annotated[
    DateTime | None,
    Query(
        alias="from",
        description="Start of the period (rounded down to its hour); default 30 days before `to`.",
    ),
]
Until = Annotated[
    DateTime | None,
    Query(
        alias="to",
        description="End of the period: every hour that starts before it counts; default now.",
    ),
]
AccountFilter = Annotated[
    uuid.UUID | None,
    Query(description="Platform admins: one account's figures (default: every account's)."),
]


# Periods are cut to these bounds (no figure lies outside them), so that computing with their
# ends never leaves the calendar.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def period_of(since: datetime | None, until: datetime | None) -> figures.Period:
    since, until = (
        None if t is None else min(max(t if t.tzinfo else t.replace(tzinfo=UTC), EARLIEST), LATEST)
        for t in (since, until)
    )
    if since is not None and until is not None and since > until:
        raise ValidationFailed.at("/query/to", "`to` must not come before `from`")
    until = until or max(datetime.now(UTC), since or EARLIEST)
    since = since or max(until - timedelta(days=DEFAULT_DAYS), EARLIEST)
    return figures.Period.of(since, until)


def account_of(principal: Principal, account_id: uuid.UUID | None) -> uuid.UUID | None:
    """Whose figures: an admin's choice (None: every account), else the caller's account."""
    if principal.is_admin:
        return account_id
    if account_id is not None and account_id != principal.account_id:
        raise Forbidden("Account owners see their own account's figures only.")
    return principal.account_id


class ExecutionFigures(BaseModel):
    total: int = Field(description="Executions that ended in the period.", examples=[120])
    by_status: dict[str, int] = Field(
        description="Executions per final status.",
        examples=[{"completed": 110, "failed": 6, "cancelled": 3, "timed_out": 1}],
    )
    success_rate: float = Field(description="Completed / total (0 with none).", examples=[0.917])
    failure_rate: float = Field(description="Failed / total.", examples=[0.05])
    cancel_rate: float = Field(description="Cancelled / total.", examples=[0.025])
    timeout_rate: float = Field(description="Timed out / total.", examples=[0.008])
    average_duration_ms: int = Field(description="Average run time, start to end.", examples=[5400])


class UsageFigures(BaseModel):
    calls: int = Field(description="Model calls.", examples=[480])
    input_tokens: int = Field(examples=[120_000])
    output_tokens: int = Field(examples=[30_000])
    cost_usd: Money = Field(description="Their cost.", examples=["1.25"])
    platform_cost_usd: Money = Field(
        description="What calls paid with the platform's key cost.", examples=["1.00"]
    )
    own_keys_cost_usd: Money = Field(
        description="What calls paid with the tenants' own keys cost.", examples=["0.25"]
    )


class Spender(BaseModel):
    id: str = Field(description="The team's or agent's id.")
    name: str | None = Field(description="Its name (none once deleted).", examples=["Research"])
    calls: int = Field(examples=[42])
    cost_usd: Money = Field(examples=["0.42"])


class ModelFigures(BaseModel):
    provider: str = Field(examples=["openai"])
    model: str = Field(examples=["gpt-4o-mini"])
    calls: int = Field(examples=[300])
    cost_usd: Money = Field(examples=["0.30"])
    average_latency_ms: int = Field(description="Average duration of a call.", examples=[820])


class SummaryOut(BaseModel):
    account_id: str | None = Field(description="Whose figures; none: every account's.")
    start: datetime = Field(description="The period's first hour.")
    end: datetime = Field(description="The end of its last hour.")
    executions: ExecutionFigures
    usage: UsageFigures
    top_teams: list[Spender] = Field(description="The teams that spent most, most first.")
    top_agents: list[Spender] = Field(description="The agents that spent most, most first.")
    models: list[ModelFigures] = Field(description="Every model called, by cost.")
    active_accounts: int = Field(description="Accounts with model calls in the period.")
    active_users: int = Field(description="Users whose executions made model calls.")


def _rate(part: int, total: int) -> float:
    return round(part / total, 4) if total else 0.0


@router.get(
    "/summary",
    response_model=SummaryOut,
    summary="Executions, success rates, spend and top spenders of a period",
    description="From the rollups: executions that ended in the period and their model calls "
    "(a running execution counts once it ends).",
    responses=problems(401, 403, 422),
)
async def get_summary(
    principal: OwnerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    since: Since = None,
    until: Until = None,
    account_id: AccountFilter = None,
) -> SummaryOut:
    period = period_of(since, until)
    account = account_of(principal, account_id)

    async def compute() -> SummaryOut:
        found = await figures.summary(session, principal.scope, account, period, top=5)
        return summary_out(found, account, period)

    params = ("summary", period.start, period.end, account)
    return await runtime.cache.read("analytics", principal.scope, params, SummaryOut, compute)


def summary_out(
    found: figures.Summary, account: uuid.UUID | None, period: figures.Period
) -> SummaryOut:
    total = sum(count for count, _ in found.executions.values())
    duration = sum(ms for _, ms in found.executions.values())
    counts = {status: count for status, (count, _) in found.executions.items()}
    payers = found.usage.values()
    return SummaryOut(
        account_id=None if account is None else str(account),
        start=period.start,
        end=period.end,
        executions=ExecutionFigures(
            total=total,
            by_status=counts,
            success_rate=_rate(counts.get("completed", 0), total),
            failure_rate=_rate(counts.get("failed", 0), total),
            cancel_rate=_rate(counts.get("cancelled", 0), total),
            timeout_rate=_rate(counts.get("timed_out", 0), total),
            average_duration_ms=round(duration / total) if total else 0,
        ),
        usage=UsageFigures(
            calls=sum(p[0] for p in payers),
            input_tokens=sum(p[1] for p in payers),
            output_tokens=sum(p[2] for p in payers),
            cost_usd=sum((p[3] for p in payers), Decimal(0)),
            platform_cost_usd=found.usage.get("platform", (0, 0, 0, Decimal(0)))[3],
            own_keys_cost_usd=found.usage.get("user", (0, 0, 0, Decimal(0)))[3],
        ),
        top_teams=[
            Spender(id=str(key), name=name, calls=calls, cost_usd=cost)
            for key, name, calls, cost in found.top_teams
        ],
        top_agents=[
            Spender(id=str(key), name=name, calls=calls, cost_usd=cost)
            for key, name, calls, cost in found.top_agents
        ],
        models=[
            ModelFigures(
                provider=provider,
                model=model,
                calls=calls,
                cost_usd=cost,
                average_latency_ms=latency,
            )
            for provider, model, calls, cost, latency in found.models
        ],
        active_accounts=found.active_accounts,
        active_users=found.active_users,
    )


class Point(BaseModel):
    at: datetime = Field(description="The bucket's start (UTC).")
    value: Money = Field(
        description="The figure (a decimal string: counts, tokens, dollars or milliseconds).",
        examples=["3"],
    )


class Series(BaseModel):
    key: str | None = Field(
        description="The `group_by` value (none: ungrouped, or the calls of no team, agent or "
        "user)."
    )
    points: list[Point] = Field(description="One per bucket of the period, 0 where nothing was.")


class TimeseriesOut(BaseModel):
    metric: str
    grain: Literal["hour", "day"]
    group_by: str | None
    account_id: str | None = Field(description="Whose figures; none: every account's.")
    start: datetime
    end: datetime
    series: list[Series]


def _series_order(item: tuple[str | None, object]) -> tuple[bool, str]:
    """Series by key, the one without a key last."""
    return item[0] is None, item[0] or ""


Metric = Literal[
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "executions",
    "failed_executions",
]
GroupBy = Literal["team", "agent", "user", "provider", "model", "paid_by", "strategy", "status"]


@router.get(
    "/timeseries",
    response_model=TimeseriesOut,
    summary="One figure per hour or day of a period, optionally per group",
    description="`calls`, tokens, `cost_usd` and `latency_ms` (average per call) group by "
    "`team`, `agent`, `user`, `provider`, `model` or `paid_by`; `executions` and "
    "`failed_executions` (ended in the bucket) by `team`, `strategy` or `status`.",
    responses=problems(401, 403, 422),
)
async def get_timeseries(
    principal: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    metric: Metric = "cost_usd",
    grain: Literal["hour", "day"] = "day",
    group_by: GroupBy | None = None,
    since: Since = None,
    until: Until = None,
    account_id: AccountFilter = None,
) -> TimeseriesOut:
    period = period_of(since, until)
    account = account_of(principal, account_id)
    groups = (
        figures.EXECUTION_GROUPS if metric in figures.EXECUTION_METRICS else figures.USAGE_GROUPS
    )
    if group_by is not None and group_by not in groups:
        raise ValidationFailed.at(
            "/query/group_by", f"`{metric}` groups by {', '.join(sorted(groups))}"
        )
    limit = settings.analytics.max_points
    if period.count(grain) > limit:
        raise ValidationFailed.at(
            "/query/grain",
            f"the period holds more than {limit} {grain}s: ask for days, or a shorter period",
        )

    async def compute() -> TimeseriesOut:
        found = await figures.timeseries(
            session,
            principal.scope,
            account,
            period,
            metric=metric,
            grain=grain,
            group_by=group_by,
        )
        return timeseries_out(found, metric, grain, group_by, account, period)

    params = ("timeseries", metric, grain, group_by, period.start, period.end, account)
    return await runtime.cache.read("analytics", principal.scope, params, TimeseriesOut, compute)


def timeseries_out(
    found: dict[str | None, dict[datetime, Decimal]],
    metric: str,
    grain: Literal["hour", "day"],
    group_by: str | None,
    account: uuid.UUID | None,
    period: figures.Period,
) -> TimeseriesOut:
    if not found and group_by is None:
        found = {None: {}}
    buckets = period.buckets(grain)
    return TimeseriesOut(
        metric=metric,
        grain=grain,
        group_by=group_by,
        account_id=None if account is None else str(account),
        start=period.start,
        end=period.end,
        series=[
            Series(
                key=key,
                points=[Point(at=at, value=values.get(at, Decimal(0))) for at in buckets],
            )
            for key, values in sorted(
                found.items(), key=lambda item: (item[0] is None, item[0] or "")
            )
        ],
    )
