"""Tokens and sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form
from pydantic import Field

from app.core.example_passwords import EXAMPLE_PASSWORD
from app.schemas.common import RequestModel, ResponseModel, Token, body_example


class LoginForm:
    """The OAuth2 password flow's form (RFC 6749, section 4.3.2), described as it is checked.

    An empty form field counts as a missing one: an empty ``grant_type`` is accepted like an
    absent one, an empty ``username`` or ``password`` is refused (FastAPI's own form declares
    ``^password$`` and no minimum length, which the server does not hold to).
    """

    def __init__(
        self,
        username: Annotated[
            str,
            # The first owner that the account example makes (`POST /api/v1/accounts`).
            Form(min_length=1, description="The user's email.", examples=["owner@acme.example"]),
        ],
        password: Annotated[
            str,
            Form(
                min_length=1,
                json_schema_extra={"format": "password"},
                examples=[EXAMPLE_PASSWORD],
            ),
        ],
        grant_type: Annotated[
            str | None, Form(pattern="^(password)?$", examples=["password"])
        ] = None,
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


# Where a refresh token goes; the examples say to paste a real one (a placeholder, not a token:
# nothing that looks like a secret is published in the schema).
_EXAMPLE_JWT = "paste-the-refresh_token-of-your-last-login-here"
REFRESH_EXAMPLES = body_example(
    "refresh",
    "Rotate your tokens",
    {"refresh_token": _EXAMPLE_JWT},
    "Paste the `refresh_token` of your last login or refresh. It is revoked; use the new one "
    "this answer carries.",
)
LOGOUT_EXAMPLES = body_example(
    "logout",
    "End your session",
    {"refresh_token": _EXAMPLE_JWT},
    "Paste the `refresh_token` of your last login or refresh: every refresh token of that "
    "session stops working.",
)
