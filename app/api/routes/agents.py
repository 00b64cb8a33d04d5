"""Agents: CRUD, scoped to the caller's account."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import Body, Query, status

from app.api.deps import BoxDep, MemberDep, PagingDep, SessionDep, SettingsDep, ViewerDep, to_page
from app.api.router import PrefixRouter
from app.schemas.agents import (
    AGENT_CREATE_EXAMPLES,
    AGENT_UPDATE_EXAMPLES,
    AgentCreate,
    AgentOut,
    AgentUpdate,
)
from app.schemas.common import Page, link, links, problems
from app.services.agents import AgentService

router = PrefixRouter(prefix="/agents", tags=["agents"])


def _agent_links(status: int, description: str, **more: dict[str, Any]) -> dict[int | str, Any]:
    """Links from a response carrying one agent to what can be done with it."""
    agent_id = "$response.body#/id"
    return links(
        status,
        description,
        GetAgent=link("get_agent", "Read the agent.", agent_id=agent_id),
        UpdateAgent=link("update_agent", "Change the agent.", agent_id=agent_id),
        DeleteAgent=link("delete_agent", "Delete the agent.", agent_id=agent_id),
        **more,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AgentOut,
    summary="Create an agent",
    description="A model plus instructions (`openai`), or a local `builtin` agent "
    "(`echo`, `template`, `wait`) that needs no network.",
    responses={
        **_agent_links(
            201,
            "The new agent.",
            CreateTeam=link(
                "create_team",
                "Make a team of the agent.",
                requestBody={"agent_ids": ["$response.body#/id"]},
            ),
        ),
        **problems(400, 401, 403, 409, 422),
    },
)
async def create_agent(
    body: Annotated[AgentCreate, Body(openapi_examples=AGENT_CREATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> AgentOut:
    return AgentOut.model_validate(
        await AgentService(session, box, settings).create(principal, body)
    )


@router.get(
    "",
    response_model=Page[AgentOut],
    summary="List agents",
    responses={
        **links(
            200,
            "One page of agents.",
            GetAgent=link(
                "get_agent", "Read the first agent.", agent_id="$response.body#/items/0/id"
            ),
        ),
        **problems(401, 422),
    },
)
async def list_agents(
    principal: ViewerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
    paging: PagingDep,
    provider: Annotated[Literal["openai", "builtin"] | None, Query()] = None,
) -> Page[AgentOut]:
    rows, total = await AgentService(session, box, settings).page(
        principal, limit=paging.limit, offset=paging.offset, provider=provider
    )
    return to_page(AgentOut, rows, total, paging)


@router.get(
    "/{agent_id}",
    response_model=AgentOut,
    summary="Get an agent",
    responses={**_agent_links(200, "The agent."), **problems(401, 404, 422)},
)
async def get_agent(
    agent_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> AgentOut:
    return AgentOut.model_validate(
        await AgentService(session, box, settings).get(principal, agent_id)
    )


@router.patch(
    "/{agent_id}",
    response_model=AgentOut,
    summary="Change an agent",
    responses={
        **_agent_links(200, "The changed agent."),
        **problems(400, 401, 403, 404, 409, 422),
    },
)
async def update_agent(
    agent_id: uuid.UUID,
    body: Annotated[AgentUpdate, Body(openapi_examples=AGENT_UPDATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> AgentOut:
    agent = await AgentService(session, box, settings).update(principal, agent_id, body)
    return AgentOut.model_validate(agent)


@router.delete(
    "/{agent_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an agent",
    description="Refused (409) while the agent is a member of a team.",
    responses=problems(401, 403, 404, 409, 422),
)
async def delete_agent(
    agent_id: uuid.UUID,
    principal: MemberDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> None:
    await AgentService(session, box, settings).delete(principal, agent_id)
