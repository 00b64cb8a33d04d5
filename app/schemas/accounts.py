"""Accounts (tenants)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from app.core.example_passwords import EXAMPLE_PASSWORD
from app.schemas.common import (
    Email,
    FullName,
    Name,
    Password,
    RequestModel,
    ResponseModel,
    body_example,
)


class AccountCreate(RequestModel):
    name: Name = Field(examples=["Acme Research"])
    owner_email: Email = Field(examples=["owner@acme.example"])
    owner_password: Password = Field(examples=[EXAMPLE_PASSWORD])
    owner_name: FullName | None = Field(default=None, examples=["Grace Hopper"])


ACCOUNT_CREATE_EXAMPLES = body_example(
    "acme",
    "A new account and its first owner",
    {
        "name": "Acme Research",
        "owner_email": "owner@acme.example",
        "owner_password": EXAMPLE_PASSWORD,
        "owner_name": "Grace Hopper",
    },
    "The owner then logs in with this email and password (`POST /api/v1/auth/token`).",
)


class AccountOut(ResponseModel):
    id: uuid.UUID
    name: str
    is_platform: bool
    created_at: datetime
