"""Helpers shared by the repositories: account scoping and pagination (by offset, or after a
position: keyset pagination)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, Table, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict
from app.core.request_context import note_account_read
from app.db.base import Base

M = TypeVar("M")
SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")
# A row's place in the order every account-scoped list uses, ``(created_at, id)``: the last
# row of a keyset page, after which the next page starts.
Position = tuple[datetime, uuid.UUID]


def table_of(model: type[Base]) -> Table:
    """A model's table, typed as one (the declarative attribute is typed as any FromClause)."""
    table = model.__table__
    if not isinstance(table, Table):  # pragma: no cover - every model here maps one table
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


@dataclass(frozen=True)
class Scope:
    """Whose data a query may see: one account, or every account (platform admins). A
    platform admin's scope names their own account as ``viewer``: its queries across every
    account, and the rows of other accounts it gets, are noted for the audit trail."""

    account_id: uuid.UUID | None
    viewer: uuid.UUID | None = None

    @property
    def all_accounts(self) -> bool:
        return self.account_id is None

    def apply(self, query: SelectT, column: Any) -> SelectT:
        if self.account_id is not None:
            return query.where(column == self.account_id)
        if self.viewer is not None:
            note_account_read(None, column.class_.__tablename__)
        return query

    def read(self, row: Any) -> None:
        """Note a row got through this scope when it belongs to another account than the
        viewer's."""
        if self.viewer is not None and row is not None and row.account_id != self.viewer:
            note_account_read(row.account_id, row.__tablename__, row.id)


async def paginate(
    session: AsyncSession, query: Select[Any], *, limit: int, offset: int
) -> tuple[Sequence[Any], int]:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = (await session.scalars(query.limit(limit).offset(offset))).all()
    return rows, int(total or 0)


async def paginate_after(
    session: AsyncSession,
    query: Select[Any],
    key: Sequence[Any],
    after: Position,
    *,
    limit: int,
    descending: bool = False,
) -> tuple[Sequence[Any], int, int]:
    """One keyset page: the rows of ``query`` (ordered by the columns ``key``, ascending or
    ``descending``) that come after ``after`` in that order, with the total and the number of
    rows before the page (its offset), both counted in one statement. An index on the query's
    filters followed by ``key`` serves it at any depth, where an offset reads and drops every
    row it skips."""
    position = tuple_(*key)
    seen, rest = (
        (position >= after, position < after)
        if descending
        else (position <= after, position > after)
    )
    counts = query.order_by(None).with_only_columns(
        func.count(), func.count().filter(seen), maintain_column_froms=True
    )
    total, before = (await session.execute(counts)).one()
    rows = (await session.scalars(query.where(rest).limit(limit))).all()
    return rows, int(total or 0), int(before or 0)


async def commit_unique(session: AsyncSession, conflict_message: str) -> None:
    """Commit; a unique-constraint race lost to another request becomes a 409."""
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(conflict_message) from exc


class AccountScopedRepository(Generic[M]):
    """Reads and writes of one model that has an ``account_id`` column."""

    model: type[Any]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, object_id: uuid.UUID, scope: Scope) -> M | None:
        query = scope.apply(
            select(self.model).where(self.model.id == object_id), self.model.account_id
        )
        found: M | None = await self.session.scalar(query)
        scope.read(found)
        return found

    def _listed(self, scope: Scope, where: Sequence[Any]) -> Select[Any]:
        query = scope.apply(select(self.model), self.model.account_id).where(*where)
        return query.order_by(*self._order)

    @property
    def _order(self) -> tuple[Any, Any]:
        return self.model.created_at, self.model.id

    async def page(
        self, scope: Scope, *, limit: int, offset: int, where: Sequence[Any] = ()
    ) -> tuple[Sequence[M], int]:
        return await paginate(self.session, self._listed(scope, where), limit=limit, offset=offset)

    async def page_after(
        self, scope: Scope, after: Position, *, limit: int, where: Sequence[Any] = ()
    ) -> tuple[Sequence[M], int, int]:
        """The page after the row at ``after`` (see ``paginate_after``), and its offset."""
        query = self._listed(scope, where)
        return await paginate_after(self.session, query, self._order, after, limit=limit)

    def add(self, obj: M) -> None:
        self.session.add(obj)

    async def delete(self, obj: M) -> None:
        await self.session.delete(obj)
