"""Tokens and sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form
from pydantic import Field

from app.schemas.common import RequestModel, ResponseModel, Token


class LoginForm:
    """The OAuth2 password flow's form (RFC 6749, section 4.3.2), described as it is checked.

    An empty form field counts as a missing one: an empty ``grant_type`` is accepted like an
    absent one, an empty ``username`` or ``password`` is refused (FastAPI's own form declares
    ``^password$`` and no minimum length, which the server does not hold to).
    """

    def __init__(
        self,
        username: Annotated[str, Form(min_length=1, description="The user's email.")],
        password: Annotated[str, Form(min_length=1, json_schema_extra={"format": "password"})],
        grant_type: Annotated[str | None, Form(pattern="^(password)?$")] = None,
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    ) -> None:
        self.username = username
        self.password = password
        self.grant_type = grant_type
        self.scopes = scope.split()
        self.client_id = client_id
        self.client_secret = client_secret


class TokenPair(ResponseModel):
    access_token: str
    refresh_token: str
    token_type: str = Field(default="bearer", examples=["bearer"])
    expires_in: int = Field(description="Seconds until the access token expires.", examples=[900])


class RefreshRequest(RequestModel):
    refresh_token: Token


class LogoutRequest(RequestModel):
    refresh_token: Token
