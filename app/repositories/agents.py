"""Agent, provider-key and team queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select

from app.models import Agent, Execution, ProviderKey, Team, TeamMember, TeamWorkflowVersion
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


class TeamRepository(AccountScopedRepository[Team]):
    model = Team

    async def by_name(self, account_id: uuid.UUID, name: str) -> Team | None:
        return await self.session.scalar(
            select(Team).where(Team.account_id == account_id, Team.name == name)
        )

    async def has_active_executions(self, team_id: uuid.UUID) -> bool:
        found = await self.session.scalar(
            select(Execution.id)
            .where(Execution.team_id == team_id, Execution.status.in_(("pending", "running")))
            .limit(1)
        )
        return found is not None

    async def members(self, team_id: uuid.UUID) -> list[TeamMember]:
        rows = await self.session.scalars(
            select(TeamMember)
            .where(TeamMember.team_id == team_id)
            .order_by(TeamMember.position, TeamMember.created_at)
        )
        return list(rows)

    async def member_count(self, team_id: uuid.UUID) -> int:
        count = await self.session.scalar(
            select(func.count()).select_from(TeamMember).where(TeamMember.team_id == team_id)
        )
        return int(count or 0)

    async def member(self, team_id: uuid.UUID, agent_id: uuid.UUID) -> TeamMember | None:
        return await self.session.scalar(
            select(TeamMember).where(TeamMember.team_id == team_id, TeamMember.agent_id == agent_id)
        )

    def add_member(self, member: TeamMember) -> None:
        self.session.add(member)

    def add_version(self, version: TeamWorkflowVersion) -> None:
        self.session.add(version)

    async def versions(self, team_id: uuid.UUID) -> list[TeamWorkflowVersion]:
        rows = await self.session.scalars(
            select(TeamWorkflowVersion)
            .where(TeamWorkflowVersion.team_id == team_id)
            .order_by(TeamWorkflowVersion.version)
        )
        return list(rows)
