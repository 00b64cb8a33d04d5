"""Teams, their members and their workflow versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from app.schemas.common import Name, RequestModel, ResponseModel, body_example
from app.schemas.workflows import WorkflowDefinition


class TeamCreate(RequestModel):
    name: Name = Field(examples=["research-team"])
    description: str | None = Field(default=None, max_length=2000)
    agent_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=1000,
        json_schema_extra={"uniqueItems": True},
        description="Agents to add as members, in order; each once.",
    )
    workflow: WorkflowDefinition | None = Field(
        default=None,
        description="Without one, the team runs its members sequentially in member order.",
    )


# Placeholders for two agents of the caller's: the examples say to replace them.
_RESEARCHER_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
_WRITER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

TEAM_CREATE_EXAMPLES = body_example(
    "research_pipeline",
    "Research, then write: a pipeline of two agents",
    {
        "name": "research-team",
        "description": "Researches a topic, then writes a short brief from the findings.",
        "agent_ids": [_RESEARCHER_ID, _WRITER_ID],
        "workflow": {
            "strategy": "pipeline",
            "steps": [
                {
                    "id": "research",
                    "agent_id": _RESEARCHER_ID,
                    "input_template": "List the key facts about {{ variables.topic }} that "
                    "this request needs: {{ prompt }}",
                },
                {
                    "id": "write",
                    "agent_id": _WRITER_ID,
                    "input_template": "{{ prompt }}\nTopic: {{ variables.topic }}\n"
                    "Research notes:\n{{ input }}",
                },
            ],
        },
    },
    "Replace the two ids with those of two of your agents (`POST /api/v1/agents`), in "
    "`agent_ids` and in the steps. In a pipeline each step's `input` is the previous step's "
    "output; both steps read the execution's `variables.topic`.",
)


class TeamUpdate(RequestModel):
    # Left out, a field keeps its value; `name` and `workflow` cannot be null (the schema says
    # so too: a workflow is replaced by a new version, never removed).
    name: Name = Field(default=None)  # type: ignore[assignment]
    description: str | None = Field(default=None, max_length=2000)
    workflow: WorkflowDefinition = Field(  # type: ignore[assignment]
        default=None, description="A new definition; saved as the next version."
    )


TEAM_UPDATE_EXAMPLES = body_example(
    "describe",
    "Change the description",
    {"description": "Researches a topic, then writes a one-page brief from the findings."},
    "Fields left out keep their value. A `workflow` is saved as the team's next version.",
)


class TeamOut(ResponseModel):
    id: uuid.UUID
    name: str
    description: str | None
    workflow: dict[str, Any] | None
    workflow_version: int
    created_at: datetime
    updated_at: datetime


class TeamMemberCreate(RequestModel):
    agent_id: uuid.UUID
    position: int | None = Field(
        default=None, ge=0, le=10_000, description="Order in the team; appended by default."
    )


TEAM_MEMBER_CREATE_EXAMPLES = body_example(
    "third_member",
    "Add an agent as the third member",
    {"agent_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427", "position": 2},
    "Replace the id with that of one of your agents that is not a member yet. With a "
    "workflow, a member runs only in the steps that name it.",
)


class TeamMemberOut(ResponseModel):
    agent_id: uuid.UUID
    position: int
    created_at: datetime


class WorkflowVersionOut(ResponseModel):
    version: int
    definition: dict[str, Any]
    created_at: datetime
