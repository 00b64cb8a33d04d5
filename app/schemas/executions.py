"""Executions, their steps, context, events, and usage."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Money, MoneyAmount, RequestModel, ResponseModel, body_example


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000_000)
    max_cost_usd: MoneyAmount | None = Field(
        default=None, description='A decimal string, e.g. `"0.50"`: at most 1000000.'
    )
    max_seconds: float | None = Field(default=None, gt=0, le=86_400)


class ExecutionCreate(RequestModel):
    prompt: str = Field(min_length=1, max_length=200_000, examples=["Summarise the report"])
    variables: dict[str, Any] = Field(
        default_factory=dict, description="Values templates can read as `variables`."
    )
    budget: Budget = Field(default_factory=Budget)


EXECUTION_CREATE_EXAMPLES = body_example(
    "research_brief",
    "A brief on a topic, within a budget",
    {
        "prompt": "Write a one-page brief for the product team.",
        "variables": {"topic": "solid-state batteries"},
        "budget": {"max_tokens": 20000, "max_cost_usd": "0.50", "max_seconds": 300},
    },
    "Fits the team example (`POST /api/v1/teams`), whose steps read `variables.topic`. The "
    "budget ends the execution (`budget_exceeded`) once its model calls have spent 20,000 "
    "tokens or $0.50, or after five minutes.",
)


CancelMode = Literal["immediate", "after_step"]
# The one list of cancel modes: the HTTP body's schema and the service's check both use it.
CANCEL_MODES: tuple[CancelMode, ...] = get_args(CancelMode)
DEFAULT_CANCEL_MODE: CancelMode = "immediate"


class ExecutionCancel(RequestModel):
    mode: CancelMode = Field(
        default=DEFAULT_CANCEL_MODE,
        description="`immediate` abandons in-flight model calls; `after_step` lets running "
        "steps finish. Either way no new step starts once this returns.",
    )


EXECUTION_CANCEL_EXAMPLES = body_example(
    "now",
    "Stop now",
    {"mode": "immediate"},
    "Abandons the model calls in flight; no new step starts. `after_step` lets the running "
    "steps finish first.",
)


class StepOut(ResponseModel):
    step_key: str
    position: int
    agent_id: uuid.UUID | None
    status: str
    attempts: int
    input: str | None
    output: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: Money
    started_at: datetime | None
    finished_at: datetime | None


class ExecutionOut(ResponseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    workflow_version: int
    strategy: str
    status: str
    status_reason: str | None
    cancel_mode: str | None = Field(
        default=None,
        description="Set once a cancel was accepted: `immediate` or `after_step`, the mode it "
        "runs in. `status` stays `running` until the running steps have stopped (`cancelled` "
        "then); null when no cancel was asked.",
        examples=[None],
    )
    prompt: str
    variables: dict[str, Any]
    budget: dict[str, Any]
    result: Any
    error: str | None
    progress: float = Field(description="Share of steps that reached an end state, 0 to 1.")
    steps: list[StepOut]
    input_tokens: int
    output_tokens: int
    cost_usd: Money
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ExecutionSummary(ResponseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    status: str
    status_reason: str | None
    created_at: datetime
    finished_at: datetime | None
    cost_usd: Money


class ContextValueOut(ResponseModel):
    key: str
    version: int
    value: Any
    step_key: str | None
    agent_id: uuid.UUID | None
    created_at: datetime


class ContextOut(BaseModel):
    current: dict[str, Any] = Field(description="The latest value of every key.")
    history: list[ContextValueOut] = Field(description="Every write, oldest first per key.")


MessageKindName = Literal["direct", "broadcast", "request", "response"]


class MessageOut(ResponseModel):
    id: uuid.UUID
    seq: int = Field(description="Order of the message within its execution.")
    kind: MessageKindName
    status: Literal["delivered", "pending", "answered", "timed_out", "late"] = Field(
        description="`pending`, `answered` or `timed_out` for a request; `late` for a response "
        "that came after its request timed out; else `delivered`."
    )
    sender_agent_id: uuid.UUID | None
    sender_step: str
    recipient_agent_id: uuid.UUID | None = Field(description="None for a broadcast.")
    correlation_id: str | None = Field(description="Shared by a request and its response.")
    body: Any
    expires_at: datetime | None = Field(description="A request's deadline.")
    created_at: datetime


class EventOut(ResponseModel):
    seq: int
    type: str
    data: dict[str, Any]
    created_at: datetime


class UsageRow(BaseModel):
    key: str | None = Field(description="The team, agent, user id, or model name.")
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Money


class UsageOut(BaseModel):
    group_by: str
    rows: list[UsageRow]
    total: UsageRow
