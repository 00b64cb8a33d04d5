"""Users: the caller's own profile and password, and user management for owners and admins."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Body, status
from starlette.convertors import StringConvertor, register_url_convertor

from app.api.deps import AuditDep, OwnerDep, PagingDep, SessionDep, ViewerDep, to_page
from app.api.router import PrefixRouter
from app.schemas.common import Page, link, links, problems
from app.schemas.users import (
    PASSWORD_CHANGE_EXAMPLES,
    USER_CREATE_EXAMPLES,
    USER_UPDATE_EXAMPLES,
    PasswordChange,
    UserCreate,
    UserOut,
    UserUpdate,
)
from app.services.users import UserService

router = PrefixRouter(prefix="/users", tags=["users"])


class _NotMe(StringConvertor):
    """Any path segment but ``me``: ``/users/me`` then never reaches ``/users/{user_id}``, so
    a method it does not serve answers 405, while a malformed id still gets a 422."""

    regex = "(?!me(?:/|$))[^/]+"


register_url_convertor("not_me", _NotMe())


def _user_links(status: int, description: str, **more: dict[str, Any]) -> dict[int | str, Any]:
    """Links from a response carrying one user to what can be done with that user."""
    user_id = "$response.body#/id"
    return links(
        status,
        description,
        GetUser=link("get_user", "Read the user.", user_id=user_id),
        UpdateUser=link("update_user", "Change the user.", user_id=user_id),
        DeleteUser=link("delete_user", "Delete the user.", user_id=user_id),
        **more,
    )


@router.get(
    "/me",
    response_model=UserOut,
    summary="The calling user",
    responses={
        **links(
            200,
            "The calling user.",
            GetAccount=link(
                "get_account", "Read the caller's account.", account_id="$response.body#/account_id"
            ),
        ),
        **problems(401),
    },
)
async def get_me(principal: ViewerDep, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await UserService(session).me(principal))


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change your own password",
    description="Any user (viewers too) changes their own password by giving the current one; "
    "the new one follows the same rules as a new user's. Every session of the user ends: "
    "their refresh tokens are revoked and their access tokens, the one that made this call "
    "included, are refused from now on, so log in again with the new password. API keys are "
    "not affected (they are separate credentials; revoke them with `DELETE /api-keys/{id}`), "
    "and cannot make this call: it needs an access token from logging in.",
    responses={
        **problems(401, 403, 409, 422),
        204: {"description": "Changed; log in again with the new password."},
    },
)
async def change_my_password(
    body: Annotated[PasswordChange, Body(openapi_examples=PASSWORD_CHANGE_EXAMPLES)],
    principal: ViewerDep,
    session: SessionDep,
    audit: AuditDep,
) -> None:
    await UserService(session, audit).change_own_password(principal, body)


@router.get(
    "",
    response_model=Page[UserOut],
    summary="List users (owner, admin)",
    description="Owners see their account's users; admins see every account's.",
    responses={
        **links(
            200,
            "One page of users.",
            GetUser=link("get_user", "Read the first user.", user_id="$response.body#/items/0/id"),
        ),
        **problems(401, 403, 422),
    },
)
async def list_users(principal: OwnerDep, session: SessionDep, paging: PagingDep) -> Page[UserOut]:
    rows, total = await UserService(session).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(UserOut, rows, total, paging)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    summary="Create a user (owner, admin)",
    responses={
        **_user_links(
            201,
            "The new user; they can log in with the password given.",
            LogInAsUser=link(
                "login",
                "Log in as the new user.",
                requestBody={
                    "username": "$request.body#/email",
                    "password": "$request.body#/password",
                },
            ),
        ),
        **problems(400, 401, 403, 404, 409, 422),
    },
)
async def create_user(
    body: Annotated[UserCreate, Body(openapi_examples=USER_CREATE_EXAMPLES)],
    principal: OwnerDep,
    session: SessionDep,
    audit: AuditDep,
) -> UserOut:
    return UserOut.model_validate(await UserService(session, audit).create(principal, body))


@router.get(
    "/{user_id:not_me}",
    response_model=UserOut,
    summary="Get a user (owner, admin)",
    responses={**_user_links(200, "The user."), **problems(401, 403, 404, 422)},
)
async def get_user(user_id: uuid.UUID, principal: OwnerDep, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await UserService(session).get(principal, user_id))


@router.patch(
    "/{user_id:not_me}",
    response_model=UserOut,
    summary="Change a user's name, role, password or activity (owner, admin)",
    description="Deactivating a user or changing their password ends their sessions: their "
    "refresh tokens are revoked and their access tokens refused from then on. Their API keys "
    "are not affected (a deactivated user's keys stop working while they are deactivated).",
    responses={**_user_links(200, "The changed user."), **problems(400, 401, 403, 404, 409, 422)},
)
async def update_user(
    user_id: uuid.UUID,
    body: Annotated[UserUpdate, Body(openapi_examples=USER_UPDATE_EXAMPLES)],
    principal: OwnerDep,
    session: SessionDep,
    audit: AuditDep,
) -> UserOut:
    return UserOut.model_validate(
        await UserService(session, audit).update(principal, user_id, body)
    )


@router.delete(
    "/{user_id:not_me}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (owner, admin)",
    responses=problems(401, 403, 404, 409, 422),
)
async def delete_user(
    user_id: uuid.UUID, principal: OwnerDep, session: SessionDep, audit: AuditDep
) -> None:
    await UserService(session, audit).delete(principal, user_id)
