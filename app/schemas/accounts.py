"""Accounts (tenants)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from app.schemas.common import Email, FullName, Name, Password, RequestModel, ResponseModel


class AccountCreate(RequestModel):
    name: Name = Field(examples=["Acme Research"])
    owner_email: Email = Field(examples=["owner@acme.example"])
    owner_password: Password = Field(examples=["a-long-passphrase"])
    owner_name: FullName | None = None


class AccountOut(ResponseModel):
    id: uuid.UUID
    name: str
    is_platform: bool
    created_at: datetime
