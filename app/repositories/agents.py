"""Agent and provider-key queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select

from app.models import Agent, ProviderKey, TeamMember
from app.repositories.base import AccountScopedRepository


class AgentRepository(AccountScopedRepository[Agent]):
    model = Agent

    async def by_name(self, account_id: uuid.UUID, name: str) -> Agent | None:
        return await self.session.scalar(
            select(Agent).where(Agent.account_id == account_id, Agent.name == name)
        )

    async def in_account(self, account_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> list[Agent]:
        if not ids:
            return []
        rows = await self.session.scalars(
            select(Agent).where(Agent.account_id == account_id, Agent.id.in_(ids))
        )
        return list(rows)

    async def uses_key(self, provider_key_id: uuid.UUID) -> bool:
        found = await self.session.scalar(
            select(Agent.id).where(Agent.provider_key_id == provider_key_id).limit(1)
        )
        return found is not None

    async def in_a_team(self, agent_id: uuid.UUID) -> bool:
        found = await self.session.scalar(
            select(TeamMember.id).where(TeamMember.agent_id == agent_id).limit(1)
        )
        return found is not None


class ProviderKeyRepository(AccountScopedRepository[ProviderKey]):
    model = ProviderKey
