"""A team's member agents."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Body, status

from app.api.deps import MemberDep, SessionDep, SettingsDep, ViewerDep
from app.api.router import PrefixRouter
from app.schemas.common import link, links, problems
from app.schemas.teams import TEAM_MEMBER_CREATE_EXAMPLES, TeamMemberCreate, TeamMemberOut
from app.services.teams import TeamService

router = PrefixRouter(prefix="/teams/{team_id}/members", tags=["team-members"])


@router.get(
    "",
    response_model=list[TeamMemberOut],
    summary="List a team's members in order",
    responses={
        **links(
            200,
            "The members, in order.",
            RemoveTeamMember=link(
                "remove_team_member",
                "Remove the first member.",
                team_id="$request.path.team_id",
                agent_id="$response.body#/0/agent_id",
            ),
        ),
        **problems(401, 404, 422),
    },
)
async def list_team_members(
    team_id: uuid.UUID, principal: ViewerDep, session: SessionDep, settings: SettingsDep
) -> list[TeamMemberOut]:
    members = await TeamService(session, settings.teams).members(principal, team_id)
    return [TeamMemberOut.model_validate(m) for m in members]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TeamMemberOut,
    summary="Add an agent to a team",
    description="The agent must belong to the team's account; a team holds at most "
    "`RENUM_TEAMS__MAX_MEMBERS` agents (409 when full).",
    responses={
        **links(
            201,
            "The new member.",
            RemoveTeamMember=link(
                "remove_team_member",
                "Remove it again.",
                team_id="$request.path.team_id",
                agent_id="$response.body#/agent_id",
            ),
        ),
        **problems(400, 401, 403, 404, 409, 422),
    },
)
async def add_team_member(
    team_id: uuid.UUID,
    body: Annotated[TeamMemberCreate, Body(openapi_examples=TEAM_MEMBER_CREATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    settings: SettingsDep,
) -> TeamMemberOut:
    member = await TeamService(session, settings.teams).add_member(principal, team_id, body)
    return TeamMemberOut.model_validate(member)


@router.delete(
    "/{agent_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove an agent from a team",
    description="Refused (409) while the team's workflow uses the agent.",
    responses=problems(401, 403, 404, 409, 422),
)
async def remove_team_member(
    team_id: uuid.UUID,
    agent_id: uuid.UUID,
    principal: MemberDep,
    session: SessionDep,
    settings: SettingsDep,
) -> None:
    await TeamService(session, settings.teams).remove_member(principal, team_id, agent_id)
