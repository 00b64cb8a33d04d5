"""API keys: created by users for machines, never with more rights than their creator."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Forbidden, NotFound, ValidationFailed
from app.core.security import hash_api_key, new_api_key
from app.models import ApiKey, Role
from app.repositories.tokens import ApiKeyRepository
from app.schemas.api_keys import ApiKeyCreate
from app.services.audit import AuditTrail
from app.services.principal import Principal


class ApiKeyService:
    def __init__(self, session: AsyncSession, audit: AuditTrail | None = None) -> None:
        self.session = session
        self.keys = ApiKeyRepository(session)
        self.audit = audit or AuditTrail.disabled()

    async def create(self, principal: Principal, data: ApiKeyCreate) -> tuple[ApiKey, str]:
        principal.require(Role.member)
        role = Role(data.role) if data.role else principal.role
        if not principal.role.at_least(role):
            raise Forbidden(f"A key's role cannot exceed its creator's ({principal.role.value}).")
        if data.expires_at is not None:
            if data.expires_at.tzinfo is None:
                data.expires_at = data.expires_at.replace(tzinfo=UTC)
            if data.expires_at <= datetime.now(UTC):
                raise ValidationFailed.at(
                    "/body/expires_at", "The expiry must be in the future.", "past_datetime"
                )
        secret = new_api_key()
        key = ApiKey(
            account_id=principal.account_id,
            user_id=principal.user_id,
            name=data.name,
            prefix=secret[:10],
            key_hash=hash_api_key(secret),
            role=role.value,
            expires_at=data.expires_at,
        )
        self.keys.add(key)
        await self.session.commit()
        await self.audit.record(
            "api_key.create",
            principal=principal,
            target=f"api_key:{key.id}",
            details={"name": key.name, "prefix": key.prefix, "role": key.role},
        )
        return key, secret

    def _owner_filter(self, principal: Principal) -> uuid.UUID | None:
        """Owners and admins manage every key they can see; others only their own."""
        return None if principal.role.at_least(Role.owner) else principal.user_id

    async def page(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[Sequence[ApiKey], int]:
        return await self.keys.page(
            principal.scope, user_id=self._owner_filter(principal), limit=limit, offset=offset
        )

    async def revoke(self, principal: Principal, key_id: uuid.UUID) -> None:
        principal.require(Role.member)
        key = await self.keys.get(key_id, principal.scope)
        owner = self._owner_filter(principal)
        if key is None or (owner is not None and key.user_id != owner):
            raise NotFound("No API key with this id.")
        if key.revoked_at is None:
            key.revoked_at = datetime.now(UTC)
            await self.session.commit()
            await self.audit.record(
                "api_key.revoke",
                principal=principal,
                account_id=key.account_id,
                target=f"api_key:{key.id}",
                details={"prefix": key.prefix},
            )
