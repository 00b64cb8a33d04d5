"""Accounts (tenants)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import EmailStr, Field

from app.schemas.common import RequestModel, ResponseModel


class AccountCreate(RequestModel):
    name: str = Field(min_length=1, max_length=120, examples=["Acme Research"])
    owner_email: EmailStr = Field(examples=["owner@acme.example"])
    owner_password: str = Field(min_length=8, max_length=256, examples=["a-long-passphrase"])
    owner_name: str | None = Field(default=None, max_length=200)


class AccountOut(ResponseModel):
    id: uuid.UUID
    name: str
    is_platform: bool
    created_at: datetime
