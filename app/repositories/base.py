"""Helpers shared by the repositories: account scoping and pagination."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    """Whose data a query may see: one account, or every account (platform admins)."""

    account_id: uuid.UUID | None

    @property
    def all_accounts(self) -> bool:
        return self.account_id is None

    def apply(self, query: Select[Any], column: Any) -> Select[Any]:
        return query if self.account_id is None else query.where(column == self.account_id)


async def paginate(
    session: AsyncSession, query: Select[Any], *, limit: int, offset: int
) -> tuple[Sequence[Any], int]:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = (await session.scalars(query.limit(limit).offset(offset))).all()
    return rows, int(total or 0)
