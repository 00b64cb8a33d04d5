"""Teams: CRUD and workflow versions, scoped to the caller's account."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Body, status

from app.api.deps import MemberDep, PagingDep, SessionDep, SettingsDep, ViewerDep, to_page
from app.api.router import PrefixRouter
from app.schemas.common import Page, link, links, problems
from app.schemas.teams import (
    TEAM_CREATE_EXAMPLES,
    TEAM_UPDATE_EXAMPLES,
    TeamCreate,
    TeamOut,
    TeamUpdate,
    WorkflowVersionOut,
)
from app.services.teams import TeamService

router = PrefixRouter(prefix="/teams", tags=["teams"])


def _team_links(status: int, description: str) -> dict[int | str, Any]:
    """Links from a response carrying one team: read, change, run, delete."""
    team_id = "$response.body#/id"
    return links(
        status,
        description,
        GetTeam=link("get_team", "Read the team.", team_id=team_id),
        UpdateTeam=link("update_team", "Change the team or its workflow.", team_id=team_id),
        ListTeamMembers=link("list_team_members", "Read its members.", team_id=team_id),
        ListWorkflowVersions=link(
            "list_workflow_versions", "Read its workflow versions.", team_id=team_id
        ),
        RunTeam=link("create_execution", "Run the team on a prompt.", team_id=team_id),
        DeleteTeam=link("delete_team", "Delete the team.", team_id=team_id),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TeamOut,
    summary="Create a team",
    description="Members are agents of the caller's account; a workflow, if given, is checked "
    "against them and saved as version 1.",
    responses={**_team_links(201, "The new team."), **problems(400, 401, 403, 409, 422)},
)
async def create_team(
    body: Annotated[TeamCreate, Body(openapi_examples=TEAM_CREATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    settings: SettingsDep,
) -> TeamOut:
    team = await TeamService(session, settings.teams).create(principal, body)
    return TeamOut.model_validate(team)


@router.get(
    "",
    response_model=Page[TeamOut],
    summary="List teams",
    responses={
        **links(
            200,
            "One page of teams.",
            GetTeam=link("get_team", "Read the first team.", team_id="$response.body#/items/0/id"),
        ),
        **problems(401, 422),
    },
)
async def list_teams(
    principal: ViewerDep, session: SessionDep, settings: SettingsDep, paging: PagingDep
) -> Page[TeamOut]:
    rows, total = await TeamService(session, settings.teams).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(TeamOut, rows, total, paging)


@router.get(
    "/{team_id}",
    response_model=TeamOut,
    summary="Get a team",
    responses={**_team_links(200, "The team."), **problems(401, 404, 422)},
)
async def get_team(
    team_id: uuid.UUID, principal: ViewerDep, session: SessionDep, settings: SettingsDep
) -> TeamOut:
    return TeamOut.model_validate(
        await TeamService(session, settings.teams).get(principal, team_id)
    )


@router.patch(
    "/{team_id}",
    response_model=TeamOut,
    summary="Change a team or its workflow",
    description="A new workflow is validated against the members and saved as the next version.",
    responses={**_team_links(200, "The changed team."), **problems(400, 401, 403, 404, 409, 422)},
)
async def update_team(
    team_id: uuid.UUID,
    body: Annotated[TeamUpdate, Body(openapi_examples=TEAM_UPDATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    settings: SettingsDep,
) -> TeamOut:
    team = await TeamService(session, settings.teams).update(principal, team_id, body)
    return TeamOut.model_validate(team)


@router.delete(
    "/{team_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a team",
    description="Refused (409) while the team has pending or running executions. Its "
    "executions go with it; its spending stays in the usage ledger.",
    responses=problems(401, 403, 404, 409, 422),
)
async def delete_team(
    team_id: uuid.UUID, principal: MemberDep, session: SessionDep, settings: SettingsDep
) -> None:
    await TeamService(session, settings.teams).delete(principal, team_id)


@router.get(
    "/{team_id}/workflow/versions",
    response_model=list[WorkflowVersionOut],
    summary="Every saved version of the team's workflow",
    responses=problems(401, 404, 422),
)
async def list_workflow_versions(
    team_id: uuid.UUID, principal: ViewerDep, session: SessionDep, settings: SettingsDep
) -> list[WorkflowVersionOut]:
    versions = await TeamService(session, settings.teams).versions(principal, team_id)
    return [WorkflowVersionOut.model_validate(v) for v in versions]
