"""Users' own model-provider keys: sealed at rest (bound to their row), never returned, shown
masked; owners and admins see the account's keys, others their own."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crypto import SecretBox
from app.core.errors import Conflict, NotFound
from app.models import ProviderKey, Role
from app.repositories.agents import AgentRepository, ProviderKeyRepository
from app.schemas.agents import ProviderKeyCreate
from app.services.audit import AuditTrail
from app.services.principal import Principal


def mask_key(key: str) -> str:
    return f"{key[:3]}...{key[-4:]}"


def provider_key_aad(account_id: uuid.UUID, key_id: uuid.UUID) -> str:
    """Associated data binding a sealed key to its row."""
    return f"provider-key:{account_id}:{key_id}"


class ProviderKeyService:
    def __init__(
        self, session: AsyncSession, box: SecretBox, audit: AuditTrail | None = None
    ) -> None:
        self.session = session
        self.box = box
        self.audit = audit or AuditTrail.disabled()
        self.keys = ProviderKeyRepository(session)

    async def create(self, principal: Principal, data: ProviderKeyCreate) -> ProviderKey:
        principal.require(Role.member)
        key_id = uuid.uuid4()
        row = ProviderKey(
            id=key_id,
            account_id=principal.account_id,
            user_id=principal.user_id,
            name=data.name,
            provider=data.provider,
            sealed_key=self.box.seal(data.key, provider_key_aad(principal.account_id, key_id)),
            encryption_key_id=self.box.current_key_id,
            hint=mask_key(data.key),
        )
        self.keys.add(row)
        await self.session.commit()
        await self.audit.record(
            "provider_key.create",
            principal=principal,
            target=f"provider_key:{key_id}",
            details={"name": data.name, "provider": data.provider, "hint": row.hint},
        )
        return row

    async def page(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[Sequence[ProviderKey], int]:
        where = (
            []
            if principal.role.at_least(Role.owner)
            else [ProviderKey.user_id == principal.user_id]
        )
        return await self.keys.page(principal.scope, limit=limit, offset=offset, where=where)

    async def get(self, principal: Principal, key_id: uuid.UUID) -> ProviderKey:
        row = await self.keys.get(key_id, principal.scope)
        # Owners and admins see the account's keys; others only their own.
        if row is None or not (
            principal.role.at_least(Role.owner) or row.user_id == principal.user_id
        ):
            raise NotFound("No provider key with this id.")
        return row

    async def delete(self, principal: Principal, key_id: uuid.UUID) -> None:
        principal.require(Role.member)
        row = await self.get(principal, key_id)
        if await AgentRepository(self.session).uses_key(row.id):
            raise Conflict("Agents still use this key; point them at another key first.")
        account_id, hint = row.account_id, row.hint
        await self.keys.delete(row)
        await self.session.commit()
        await self.audit.record(
            "provider_key.delete",
            principal=principal,
            account_id=account_id,
            target=f"provider_key:{key_id}",
            details={"hint": hint},
        )

    def reveal(self, row: ProviderKey) -> str:
        """The plaintext key, for the provider call only; never returned or logged."""
        return self.box.open(row.sealed_key, provider_key_aad(row.account_id, row.id))
