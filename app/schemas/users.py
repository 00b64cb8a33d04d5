"""Users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from app.schemas.common import VERBATIM, Email, FullName, Password, RequestModel, ResponseModel

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


# The password a user has now: whatever it is (an operator may have set a short one), as sent.
CurrentPassword = Annotated[str, StringConstraints(min_length=1, max_length=256), VERBATIM]


class PasswordChange(RequestModel):
    current_password: CurrentPassword = Field(
        description="The password the caller logs in with now.",
        examples=["the-current-passphrase"],
    )
    new_password: Password = Field(
        description="The new password: the same rules as a new user's (8 to 256 characters).",
        examples=["an-even-longer-passphrase"],
    )
