"""Usage: tokens and cost of model calls from the ledger, grouped and totalled, within the
caller's scope. The ledger's figures include the daily totals its purged rows were folded into
(``LedgerRepository.totals``), so a retention purge leaves them as they were."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import ValidationFailed
from app.repositories.ledger import LedgerRepository
from app.schemas.executions import UsageOut, UsageRow
from app.services.principal import Principal


class UsageService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.ledger = LedgerRepository(session)

    async def report(
        self,
        principal: Principal,
        group_by: str,
        since: datetime | None,
        until: datetime | None,
    ) -> UsageOut:
        since, until = (
            None if t is None else (t if t.tzinfo else t.replace(tzinfo=UTC))
            for t in (since, until)
        )
        # `from` counts, `to` does not: `from == to` is an empty period, with nothing in it.
        if since is not None and until is not None and since > until:
            raise ValidationFailed.at("/query/to", "`to` must not come before `from`")
        rows = await self.ledger.totals(principal.scope, group_by, since=since, until=until)
        out = [
            UsageRow(
                key=None if key is None else str(key),
                calls=calls,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=Decimal(str(cost)),
            )
            for key, calls, tokens_in, tokens_out, cost in rows
        ]
        total = UsageRow(
            key=None,
            calls=sum(r.calls for r in out),
            input_tokens=sum(r.input_tokens for r in out),
            output_tokens=sum(r.output_tokens for r in out),
            cost_usd=sum((r.cost_usd for r in out), Decimal(0)),
        )
        return UsageOut(group_by=group_by, rows=out, total=total)
