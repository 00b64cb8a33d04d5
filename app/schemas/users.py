"""Users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas.common import Email, FullName, Password, RequestModel, ResponseModel

AccountRole = Literal["owner", "member", "viewer"]


class UserCreate(RequestModel):
    email: Email = Field(examples=["ada@acme.example"])
    password: Password = Field(examples=["a-long-passphrase"])
    full_name: FullName | None = Field(default=None, examples=["Ada Lovelace"])
    role: AccountRole = Field(default="member")
    account_id: uuid.UUID | None = Field(
        default=None, description="Admins only: the account to create the user in."
    )


class UserUpdate(RequestModel):
    full_name: FullName | None = None
    role: AccountRole | None = None
    is_active: bool | None = None
    password: Password | None = None


class UserOut(ResponseModel):
    id: uuid.UUID
    account_id: uuid.UUID
    email: str
    full_name: str | None
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
