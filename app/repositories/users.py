"""User queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import User
from app.repositories.base import Scope, paginate


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID, scope: Scope | None = None) -> User | None:
        query = select(User).where(User.id == user_id)
        if scope is not None:
            query = scope.apply(query, User.account_id)
        return await self.session.scalar(query)

    async def by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email.lower()))

    async def count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(User)) or 0)

    async def page(self, scope: Scope, *, limit: int, offset: int) -> tuple[Sequence[User], int]:
        query = scope.apply(select(User), User.account_id).order_by(User.created_at, User.id)
        return await paginate(self.session, query, limit=limit, offset=offset)

    def add(self, user: User) -> None:
        self.session.add(user)

    async def record_login(self, user_id: uuid.UUID, when: datetime) -> None:
        await self.session.execute(
            update(User).where(User.id == user_id).values(last_login_at=when)
        )

    async def change_password(
        self, user_id: uuid.UUID, new_hash: str, *, expected_hash: str | None = None
    ) -> bool:
        """Store ``new_hash`` and move to the next token generation (ending every token issued
        before); with ``expected_hash``, only if the stored hash is still that one (nobody
        changed the password meanwhile). Whether the user was changed."""
        query = update(User).where(User.id == user_id)
        if expected_hash is not None:
            query = query.where(User.password_hash == expected_hash)
        result = await self.session.execute(
            query.values(password_hash=new_hash, token_generation=User.token_generation + 1)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, user: User) -> None:
        await self.session.delete(user)
