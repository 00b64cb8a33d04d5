"""Tokens and sessions."""

from __future__ import annotations

from pydantic import Field

from app.schemas.common import RequestModel, ResponseModel


class TokenPair(ResponseModel):
    access_token: str
    refresh_token: str
    token_type: str = Field(default="bearer", examples=["bearer"])
    expires_in: int = Field(description="Seconds until the access token expires.", examples=[900])


class RefreshRequest(RequestModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class LogoutRequest(RequestModel):
    refresh_token: str = Field(min_length=1, max_length=4096)
