"""Usage totals from the cost ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LedgerEntry
from app.repositories.base import Scope

GROUP_COLUMNS = {
    "team": LedgerEntry.team_id,
    "agent": LedgerEntry.agent_id,
    "user": LedgerEntry.user_id,
    "model": LedgerEntry.model,
    "paid_by": LedgerEntry.paid_by,
}


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
        column = GROUP_COLUMNS[group_by]
        query = scope.apply(
            select(
                column,
                func.count(LedgerEntry.id),
                func.coalesce(func.sum(LedgerEntry.input_tokens), 0),
                func.coalesce(func.sum(LedgerEntry.output_tokens), 0),
                func.coalesce(func.sum(LedgerEntry.cost_usd), 0),
            ),
            LedgerEntry.account_id,
        )
        if since is not None:
            query = query.where(LedgerEntry.created_at >= since)
        if until is not None:
            query = query.where(LedgerEntry.created_at < until)
        rows = await self.session.execute(query.group_by(column).order_by(column))
        return [
            (key, int(calls), int(inputs), int(outputs), cost)
            for key, calls, inputs, outputs, cost in rows
        ]
