"""Users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import EmailStr, Field

from app.schemas.common import RequestModel, ResponseModel

AccountRole = Literal["owner", "member", "viewer"]


class UserCreate(RequestModel):
    email: EmailStr = Field(examples=["ada@acme.example"])
    password: str = Field(min_length=8, max_length=256, examples=["a-long-passphrase"])
    full_name: str | None = Field(default=None, max_length=200, examples=["Ada Lovelace"])
    role: AccountRole = Field(default="member")
    account_id: uuid.UUID | None = Field(
        default=None, description="Admins only: the account to create the user in."
    )


class UserUpdate(RequestModel):
    full_name: str | None = Field(default=None, max_length=200)
    role: AccountRole | None = None
    is_active: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=256)


class UserOut(ResponseModel):
    id: uuid.UUID
    account_id: uuid.UUID
    email: str
    full_name: str | None
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
