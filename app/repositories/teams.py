"""Team queries: teams, their members and their workflow versions."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from app.models import Execution, Team, TeamMember, TeamWorkflowVersion
from app.repositories.base import AccountScopedRepository


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
