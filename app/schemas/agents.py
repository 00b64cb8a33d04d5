"""Agents and users' provider keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, AnyHttpUrl, BaseModel, ConfigDict, Field

from app.schemas.common import Name, RequestModel, ResponseModel, body_example

Provider = Literal["openai", "builtin"]


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=10, description="Tries per model call.")
    initial_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    max_backoff_seconds: float = Field(default=8.0, ge=0, le=300)


class AgentParameters(BaseModel):
    """Model parameters, and for builtin agents the template (`template`) or seconds (`wait`)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    template: str | None = Field(
        default=None,
        max_length=20_000,
        description="builtin `template` agents: a Jinja2 template over `input`, `context` "
        "and `variables`; `remember(key, value)` writes to the shared context.",
        examples=["Summary of {{ input }} for {{ variables.audience }}"],
    )
    output_key: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="builtin agents: also write the output to this context key.",
    )
    seconds: float | None = Field(
        default=None,
        gt=0,
        le=600,
        strict=True,  # a number: neither "30" nor true
        description="builtin `wait` agents (required there): how long to wait before "
        "answering with the input; at most the agent's `timeout_seconds`. The wait spends no "
        "tokens, and a cancel or the execution's `max_seconds` interrupts it like a model call.",
        examples=[30],
    )


BASE_URL_HELP = (
    "`openai` agents: another OpenAI-compatible endpoint than the platform's (http or https, "
    "no user information, query or fragment; its host must be publicly routable on an "
    "allowed port unless the operator allows it, else 422). Such an agent needs its own "
    "`provider_key_id`."
)
PROVIDER_KEY_HELP = (
    "`openai` agents: pay with this stored provider key instead of the platform's key. "
    "Required when `base_url` is not the platform's (the platform's key goes only to the "
    "platform's URL)."
)


class AgentCreate(RequestModel):
    name: Name = Field(examples=["researcher"])
    description: str | None = Field(default=None, max_length=2000)
    system_prompt: str | None = Field(default=None, max_length=50_000)
    provider: Provider = Field(examples=["builtin"])
    model: str = Field(
        min_length=1,
        max_length=200,
        description="The model name; for `builtin` agents the kind: `echo` (answers with "
        "its input), `template` (renders `parameters.template`) or `wait` (waits "
        "`parameters.seconds`, then answers with its input).",
        examples=["echo"],
    )
    parameters: AgentParameters = Field(default_factory=AgentParameters)
    timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    base_url: AnyHttpUrl | None = Field(default=None, description=BASE_URL_HELP)
    provider_key_id: uuid.UUID | None = Field(default=None, description=PROVIDER_KEY_HELP)


AGENT_CREATE_EXAMPLES = body_example(
    "researcher",
    "A model agent on the platform's provider",
    {
        "name": "researcher",
        "description": "Finds the key facts about a topic.",
        "system_prompt": "You are a careful researcher. Answer with short, factual bullet points.",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "parameters": {"temperature": 0.2, "max_tokens": 800},
        "timeout_seconds": 60,
        "retry": {"max_attempts": 3, "initial_backoff_seconds": 0.5, "max_backoff_seconds": 8},
    },
    "Calls the platform's OpenAI-compatible provider with the platform's key. Another endpoint "
    "takes `base_url` and `provider_key_id` (a key of yours: `POST /api/v1/provider-keys`). "
    'A builtin agent needs no model server: `"provider": "builtin"` with `"model": "echo"`.',
)


class AgentUpdate(RequestModel):
    # Left out, a field keeps its value; those typed without `None` cannot be null.
    name: Name = Field(default=None)  # type: ignore[assignment]
    description: str | None = Field(default=None, max_length=2000)
    system_prompt: str | None = Field(default=None, max_length=50_000)
    model: str = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    parameters: AgentParameters = Field(default=None)  # type: ignore[assignment]
    timeout_seconds: float = Field(default=None, gt=0, le=600)  # type: ignore[assignment]
    retry: RetrySettings = Field(default=None)  # type: ignore[assignment]
    base_url: AnyHttpUrl | None = Field(default=None, description=BASE_URL_HELP)
    provider_key_id: uuid.UUID | None = Field(default=None, description=PROVIDER_KEY_HELP)


AGENT_UPDATE_EXAMPLES = body_example(
    "steadier",
    "Steadier answers, with more time",
    {"parameters": {"temperature": 0, "max_tokens": 1200}, "timeout_seconds": 120},
    "Fields left out keep their value; `parameters` and `retry` are replaced as a whole.",
)


class AgentOut(ResponseModel):
    id: uuid.UUID
    name: str
    description: str | None
    system_prompt: str | None
    provider: str
    model: str
    parameters: dict[str, Any]
    timeout_seconds: float
    retry: dict[str, Any]
    base_url: str | None
    provider_key_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class ProviderKeyCreate(RequestModel):
    name: str = Field(min_length=1, max_length=120, examples=["my OpenAI key"])
    provider: Literal["openai"] = "openai"
    key: str = Field(
        min_length=8, max_length=500, description="The provider's API key; never returned."
    )


PROVIDER_KEY_CREATE_EXAMPLES = body_example(
    "openai",
    "Your own OpenAI key",
    {"name": "my OpenAI key", "provider": "openai", "key": "sk-your-provider-key"},
    "Stored encrypted and never shown again (answers carry `masked_key`); agents pay with it "
    "through `provider_key_id`.",
)


class ProviderKeyOut(ResponseModel):
    id: uuid.UUID
    name: str
    provider: str
    masked_key: str = Field(
        validation_alias=AliasChoices("hint", "masked_key"),
        description="Only the first and last characters, e.g. `sk-...a1b2`.",
    )
    user_id: uuid.UUID
    created_at: datetime
