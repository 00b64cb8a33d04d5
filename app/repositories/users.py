"""User queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app.models import User
from app.repositories.base import Scope, paginate

# Every bump of a user's token generation is this SQL expression, evaluated by the database.
NEXT_GENERATION = User.token_generation + 1


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID, scope: Scope | None = None) -> User | None:
        query = select(User).where(User.id == user_id)
        if scope is not None:
            query = scope.apply(query, User.account_id)
        user: User | None = await self.session.scalar(query)
        if scope is not None:
            scope.read(user)
        return user

    async def by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email.lower()))

    async def count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(User)) or 0)

    async def page(self, scope: Scope, *, limit: int, offset: int) -> tuple[Sequence[User], int]:
        query = scope.apply(select(User), User.account_id).order_by(User.created_at, User.id)
        return await paginate(self.session, query, limit=limit, offset=offset)

    def add(self, user: User) -> None:
        self.session.add(user)

    async def record_login(self, user_id: uuid.UUID, when: datetime, *, generation: int) -> bool:
        """Record a login, only if the user is still active and at token generation
        ``generation`` (the one read before the password was verified): whether they were.
        A password change or a deactivation that landed meanwhile makes it False. The update
        locks the user's row (PostgreSQL) or holds the write lock (SQLite) until the login's
        transaction ends, so no change can land between this check and the session's
        refresh token being stored."""
        result = await self.session.execute(
            update(User)
            .where(
                User.id == user_id,
                User.token_generation == generation,
                User.is_active.is_(True),
            )
            .values(last_login_at=when)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def advance_token_generation(self, user_id: uuid.UUID) -> int | None:
        """Move the user to the next token generation, ending every token issued before; the
        new generation (None for no such user). The increment is done by the database
        (``token_generation + 1``), never read then written, so two concurrent changes each
        count; a copy of the user loaded in this session is given the stored value."""
        generation = await self.session.scalar(
            update(User)
            .where(User.id == user_id)
            .values(token_generation=NEXT_GENERATION)
            .returning(User.token_generation)
            .execution_options(synchronize_session=False)
        )
        loaded = self.session.identity_map.get(identity_key(User, user_id))
        if loaded is not None and generation is not None:
            set_committed_value(loaded, "token_generation", generation)
        return generation

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
            query.values(password_hash=new_hash, token_generation=NEXT_GENERATION)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, user: User) -> None:
        await self.session.delete(user)
