"""Sessions: log in with a password, refresh, log out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from app.api.deps import CodecDep, SessionDep
from app.schemas.auth import LogoutRequest, RefreshRequest, TokenPair
from app.schemas.common import problems
from app.services.auth import AuthService

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Log in with email and password",
    description="OAuth2 password flow: `username` is the email. Returns a short-lived access "
    "token and a refresh token.",
    responses=problems(401, 422),
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, codec: CodecDep
) -> TokenPair:
    return await AuthService(session, codec).login(form.username, form.password)


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Exchange a refresh token for new tokens",
    description="The presented refresh token is revoked and replaced (rotation); presenting a "
    "revoked one again ends the whole session.",
    responses=problems(400, 401, 422),
)
async def refresh(body: RefreshRequest, session: SessionDep, codec: CodecDep) -> TokenPair:
    return await AuthService(session, codec).refresh(body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a refresh token and its session",
    responses=problems(400, 401, 422),
)
async def logout(body: LogoutRequest, session: SessionDep, codec: CodecDep) -> None:
    await AuthService(session, codec).logout(body.refresh_token)
