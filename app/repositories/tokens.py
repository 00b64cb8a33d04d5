"""Refresh-token and API-key queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey, RefreshToken
from app.repositories.base import Scope, paginate


class RefreshTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, token_id: uuid.UUID) -> RefreshToken | None:
        return await self.session.get(RefreshToken, token_id)

    def add(self, token: RefreshToken) -> None:
        self.session.add(token)

    async def revoke(self, token_id: uuid.UUID, when: datetime) -> bool:
        """Revoke one token if it is not revoked yet (a conditional update, not a read then a
        write): whether this call revoked it. Of two callers racing to rotate or revoke the
        same token, exactly one gets True."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=when)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def revoke_family(self, family_id: uuid.UUID, when: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=when)
        )

    async def revoke_user(self, user_id: uuid.UUID, when: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=when)
        )


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        return await self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))

    async def get(self, key_id: uuid.UUID, scope: Scope) -> ApiKey | None:
        query = scope.apply(select(ApiKey).where(ApiKey.id == key_id), ApiKey.account_id)
        key: ApiKey | None = await self.session.scalar(query)
        scope.read(key)
        return key

    async def page(
        self, scope: Scope, *, user_id: uuid.UUID | None, limit: int, offset: int
    ) -> tuple[Sequence[ApiKey], int]:
        query = scope.apply(select(ApiKey), ApiKey.account_id)
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        query = query.order_by(ApiKey.created_at, ApiKey.id)
        return await paginate(self.session, query, limit=limit, offset=offset)

    def add(self, key: ApiKey) -> None:
        self.session.add(key)
