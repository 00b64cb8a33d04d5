"""Account queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Account
from app.repositories.base import paginate


class AccountRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, account_id: uuid.UUID) -> Account | None:
        return await self.session.get(Account, account_id)

    async def by_name_key(self, name_key: str) -> Account | None:
        return await self.session.scalar(select(Account).where(Account.name_key == name_key))

    async def platform(self) -> Account | None:
        return await self.session.scalar(select(Account).where(Account.is_platform.is_(True)))

    async def page(self, *, limit: int, offset: int) -> tuple[Sequence[Account], int]:
        query = select(Account).order_by(Account.created_at, Account.id)
        return await paginate(self.session, query, limit=limit, offset=offset)

    async def active_executions_total(self) -> int:
        """Executions pending or running across all accounts: the per-account slot counters
        summed."""
        total = await self.session.scalar(
            select(func.coalesce(func.sum(Account.active_executions), 0))
        )
        return int(total or 0)

    def add(self, account: Account) -> None:
        self.session.add(account)
