"""Users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from app.core.example_passwords import EXAMPLE_NEW_PASSWORD, EXAMPLE_PASSWORD
from app.schemas.common import (
    VERBATIM,
    Email,
    FullName,
    Password,
    RequestModel,
    ResponseModel,
    body_example,
)

AccountRole = Literal["owner", "member", "viewer"]


class UserCreate(RequestModel):
    email: Email = Field(examples=["ada@acme.example"])
    password: Password = Field(examples=[EXAMPLE_PASSWORD])
    full_name: FullName | None = Field(default=None, examples=["Ada Lovelace"])
    role: AccountRole = Field(default="member")
    account_id: uuid.UUID | None = Field(
        default=None, description="Admins only: the account to create the user in."
    )


USER_CREATE_EXAMPLES = body_example(
    "member",
    "A member of your account",
    {
        "email": "ada@acme.example",
        "password": EXAMPLE_PASSWORD,
        "full_name": "Ada Lovelace",
        "role": "member",
    },
    "Created in the caller's account; platform admins name another with `account_id`. The user "
    "logs in with this email and password.",
)


class UserUpdate(RequestModel):
    full_name: FullName | None = None
    role: AccountRole | None = None
    is_active: bool | None = None
    password: Password | None = None


USER_UPDATE_EXAMPLES = body_example(
    "rename_and_demote",
    "A new name and a lower role",
    {"full_name": "Ada King", "role": "viewer"},
    "Fields left out keep their value. `is_active: false` blocks the user from logging in; "
    "`password` sets a new one.",
)


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
        examples=[EXAMPLE_PASSWORD],
    )
    new_password: Password = Field(
        description="The new password: the same rules as a new user's (8 to 256 characters).",
        examples=[EXAMPLE_NEW_PASSWORD],
    )


PASSWORD_CHANGE_EXAMPLES = body_example(
    "new_password",
    "Replace your password",
    {"current_password": EXAMPLE_PASSWORD, "new_password": EXAMPLE_NEW_PASSWORD},
    "Ends every session of yours, this one included: log in again with the new password.",
)
