"""API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas.common import DateTime, Name, RequestModel, ResponseModel, body_example


class ApiKeyCreate(RequestModel):
    name: Name = Field(examples=["ci-pipeline"])
    role: Literal["admin", "owner", "member", "viewer"] | None = Field(
        default=None, description="Defaults to the creator's role; never above it."
    )
    expires_at: DateTime | None = Field(
        default=None, description="Optional expiry, in the future (without an offset: UTC)."
    )


API_KEY_CREATE_EXAMPLES = body_example(
    "ci",
    "A key for a CI pipeline",
    {"name": "ci-pipeline", "role": "member"},
    "Acts as its creator with at most this role; add `expires_at` (a future date and time) to "
    "end it then. The answer shows the secret `key` once.",
)


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    role: str
    user_id: uuid.UUID
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown once; store it now.")
