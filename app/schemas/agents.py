"""Agents and users' provider keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, AnyHttpUrl, BaseModel, ConfigDict, Field

from app.schemas.common import Name, RequestModel, ResponseModel

Provider = Literal["openai", "builtin"]


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=10, description="Tries per model call.")
    initial_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    max_backoff_seconds: float = Field(default=8.0, ge=0, le=300)


class AgentParameters(BaseModel):
    """Model parameters, and for builtin `template` agents the template itself."""

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
        description="The model name; for `builtin` agents the kind: `echo` or `template`.",
        examples=["echo"],
    )
    parameters: AgentParameters = Field(default_factory=AgentParameters)
    timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    base_url: AnyHttpUrl | None = Field(default=None, description=BASE_URL_HELP)
    provider_key_id: uuid.UUID | None = Field(default=None, description=PROVIDER_KEY_HELP)


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
