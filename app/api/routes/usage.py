"""Usage: tokens and cost from the ledger, grouped by team, agent, user or model."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

from app.api.deps import RuntimeDep, SessionDep, ViewerDep
from app.api.router import PrefixRouter
from app.schemas.common import DateTime, problems
from app.schemas.executions import UsageOut
from app.services.usage import UsageService

router = PrefixRouter(tags=["usage"])


@router.get(
    "/usage",
    response_model=UsageOut,
    summary="Tokens and cost of model calls, grouped",
    description="`paid_by` splits calls paid with users' own keys from the platform's key.",
    responses=problems(401, 422),
)
async def get_usage(
    principal: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    group_by: Literal["team", "agent", "user", "model", "paid_by"] = "team",
    since: Annotated[
        DateTime | None, Query(alias="from", description="Calls at or after this instant.")
    ] = None,
    until: Annotated[
        DateTime | None,
        Query(
            alias="to",
            description="Calls before this instant; not before `from` (equal to it: an empty "
            "period, with nothing in it).",
        ),
    ] = None,
) -> UsageOut:
    params = (group_by, since, until)
    return await runtime.cache.read(
        "usage",
        principal.scope,
        params,
        UsageOut,
        lambda: UsageService(session).report(principal, group_by, since, until),
    )
