"""Sessions: log in with a password, refresh, log out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Depends, status

from app.api.deps import AuditDep, CodecDep, ScreenDep, SessionDep, screen_source
from app.api.router import PrefixRouter
from app.schemas.auth import (
    LOGOUT_EXAMPLES,
    REFRESH_EXAMPLES,
    LoginForm,
    LogoutRequest,
    RefreshRequest,
    TokenPair,
)
from app.schemas.common import link, links, problems
from app.services.auth import AuthService

router = PrefixRouter(prefix="/auth", tags=["auth"])


def _session_links(description: str) -> dict[int | str, Any]:
    """Links from a token pair to the operations that take its refresh token."""
    token = {"refresh_token": "$response.body#/refresh_token"}
    return links(
        200,
        description,
        Refresh=link("refresh", "Rotate the tokens.", requestBody=token),
        LogOut=link("logout", "End the session.", requestBody=token),
    )


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Log in with email and password",
    description="OAuth2 password flow: `username` is the email, sent as a form "
    "(`application/x-www-form-urlencoded`, as OAuth2 requires), not as JSON. Returns a "
    "short-lived access token and a refresh token.",
    responses={**_session_links("A new session's tokens."), **problems(401, 422)},
)
async def login(
    form: Annotated[LoginForm, Depends()],
    session: SessionDep,
    codec: CodecDep,
    audit: AuditDep,
    screen: ScreenDep,
) -> TokenPair:
    return await AuthService(session, codec, audit, screen).login(form.username, form.password)


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Exchange a refresh token for new tokens",
    description="The presented refresh token is revoked and replaced (rotation); presenting a "
    "revoked one again ends the whole session.",
    responses={**_session_links("The session's new tokens."), **problems(400, 401, 422)},
    dependencies=[Depends(screen_source)],
)
async def refresh(
    body: Annotated[RefreshRequest, Body(openapi_examples=REFRESH_EXAMPLES)],
    session: SessionDep,
    codec: CodecDep,
    audit: AuditDep,
) -> TokenPair:
    return await AuthService(session, codec, audit).refresh(body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a refresh token and its session",
    responses=problems(400, 401, 422),
    dependencies=[Depends(screen_source)],
)
async def logout(
    body: Annotated[LogoutRequest, Body(openapi_examples=LOGOUT_EXAMPLES)],
    session: SessionDep,
    codec: CodecDep,
    audit: AuditDep,
) -> None:
    await AuthService(session, codec, audit).logout(body.refresh_token)
