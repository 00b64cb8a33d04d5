"""Teams, their members and their workflow versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from app.schemas.common import Name, RequestModel, ResponseModel
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


class TeamUpdate(RequestModel):
    # Left out, a field keeps its value; `name` and `workflow` cannot be null (the schema says
    # so too: a workflow is replaced by a new version, never removed).
    name: Name = Field(default=None)  # type: ignore[assignment]
    description: str | None = Field(default=None, max_length=2000)
    workflow: WorkflowDefinition = Field(  # type: ignore[assignment]
        default=None, description="A new definition; saved as the next version."
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


class TeamMemberOut(ResponseModel):
    agent_id: uuid.UUID
    position: int
    created_at: datetime


class WorkflowVersionOut(ResponseModel):
    version: int
    definition: dict[str, Any]
    created_at: datetime
