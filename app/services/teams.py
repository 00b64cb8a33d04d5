"""Teams: members from the team's account, and versioned, validated workflows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import TeamSettings
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.models import Role, Team, TeamMember, TeamWorkflowVersion
from app.repositories.agents import AgentRepository
from app.repositories.base import Scope, commit_unique
from app.repositories.teams import TeamRepository
from app.schemas.teams import TeamCreate, TeamMemberCreate, TeamUpdate
from app.schemas.workflows import WorkflowDefinition
from app.services.principal import Principal
from app.services.workflows import validate_workflow


class TeamService:
    def __init__(self, session: AsyncSession, settings: TeamSettings) -> None:
        self.session = session
        self.settings = settings
        self.teams = TeamRepository(session)
        self.agents = AgentRepository(session)

    async def get(self, principal: Principal, team_id: uuid.UUID) -> Team:
        team = await self.teams.get(team_id, principal.scope)
        if team is None:
            raise NotFound("No team with this id.")
        return team

    async def page(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[Sequence[Team], int]:
        return await self.teams.page(principal.scope, limit=limit, offset=offset)

    async def create(self, principal: Principal, data: TeamCreate) -> Team:
        principal.require(Role.member)
        if len(set(data.agent_ids)) != len(data.agent_ids):
            raise ValidationFailed.at("/body/agent_ids", "an agent is listed twice")
        if len(data.agent_ids) > self.settings.max_members:
            raise ValidationFailed.at(
                "/body/agent_ids", f"a team has at most {self.settings.max_members} agents"
            )
        found = {a.id for a in await self.agents.in_account(principal.account_id, data.agent_ids)}
        for index, agent_id in enumerate(data.agent_ids):
            if agent_id not in found:
                raise ValidationFailed.at(
                    f"/body/agent_ids/{index}", "unknown agent", "unknown_agent"
                )
        if data.workflow is not None:
            validate_workflow(data.workflow, data.agent_ids, "/body/workflow")
        if await self.teams.by_name(principal.account_id, data.name) is not None:
            raise Conflict(f"A team named {data.name!r} already exists.")
        team = Team(
            account_id=principal.account_id,
            created_by=principal.user_id,
            name=data.name,
            description=data.description,
        )
        self.teams.add(team)
        await self.session.flush()
        for position, agent_id in enumerate(data.agent_ids):
            self.teams.add_member(TeamMember(team_id=team.id, agent_id=agent_id, position=position))
        if data.workflow is not None:
            self._save_version(team, data.workflow, principal)
        await commit_unique(self.session, f"A team named {data.name!r} already exists.")
        return team

    async def update(self, principal: Principal, team_id: uuid.UUID, data: TeamUpdate) -> Team:
        principal.require(Role.member)
        team = await self.get(principal, team_id)
        changes = data.model_dump(exclude_unset=True)
        if "name" in changes:
            if data.name is None:
                raise ValidationFailed.at("/body/name", "name cannot be null", "null")
            team.name = data.name
        if "description" in changes:
            team.description = data.description
        if "workflow" in changes and data.workflow is None:
            raise ValidationFailed.at(
                "/body/workflow", "a workflow cannot be removed; send a new one", "null"
            )
        if data.workflow is not None:
            members = [m.agent_id for m in await self.teams.members(team.id)]
            validate_workflow(data.workflow, members, "/body/workflow")
            self._save_version(team, data.workflow, principal)
        await commit_unique(self.session, "A team with this name already exists.")
        return team

    async def delete(self, principal: Principal, team_id: uuid.UUID) -> None:
        principal.require(Role.member)
        team = await self.get(principal, team_id)
        if await self.teams.has_active_executions(team.id):
            raise Conflict("The team has pending or running executions; cancel them first.")
        await self.teams.delete(team)
        await self.session.commit()

    async def versions(self, principal: Principal, team_id: uuid.UUID) -> list[TeamWorkflowVersion]:
        team = await self.get(principal, team_id)
        return await self.teams.versions(team.id)

    async def members(self, principal: Principal, team_id: uuid.UUID) -> list[TeamMember]:
        team = await self.get(principal, team_id)
        return await self.teams.members(team.id)

    async def add_member(
        self, principal: Principal, team_id: uuid.UUID, data: TeamMemberCreate
    ) -> TeamMember:
        principal.require(Role.member)
        team = await self.get(principal, team_id)
        if await self.agents.get(data.agent_id, Scope(team.account_id)) is None:
            raise NotFound("No agent with this id.")
        if await self.teams.member(team.id, data.agent_id) is not None:
            raise Conflict("This agent is already a member of the team.")
        count = await self.teams.member_count(team.id)
        if count >= self.settings.max_members:
            raise Conflict(f"The team is full: at most {self.settings.max_members} agents.")
        member = TeamMember(
            team_id=team.id,
            agent_id=data.agent_id,
            position=count if data.position is None else data.position,
        )
        self.teams.add_member(member)
        await commit_unique(self.session, "This agent is already a member of the team.")
        return member

    async def remove_member(
        self, principal: Principal, team_id: uuid.UUID, agent_id: uuid.UUID
    ) -> None:
        principal.require(Role.member)
        team = await self.get(principal, team_id)
        member = await self.teams.member(team.id, agent_id)
        if member is None:
            raise NotFound("This agent is not a member of the team.")
        steps = (team.workflow or {}).get("steps", [])
        if any(step.get("agent_id") == str(agent_id) for step in steps):
            raise Conflict("The team's workflow uses this agent; change the workflow first.")
        await self.session.delete(member)
        await self.session.commit()

    def _save_version(self, team: Team, workflow: WorkflowDefinition, principal: Principal) -> None:
        definition = workflow.model_dump(mode="json", exclude_none=True)
        team.workflow = definition
        team.workflow_version += 1
        self.teams.add_version(
            TeamWorkflowVersion(
                team_id=team.id,
                version=team.workflow_version,
                definition=definition,
                created_by=principal.user_id,
            )
        )
