"""Users: the caller's own profile, and user management for owners and admins."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.api.deps import PagingDep, PrincipalDep, SessionDep, to_page
from app.schemas.common import Page, problems
from app.schemas.users import UserCreate, UserOut, UserUpdate
from app.services.users import UserService

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserOut, summary="The calling user", responses=problems(401))
async def get_me(principal: PrincipalDep, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await UserService(session).me(principal))


@router.get(
    "",
    response_model=Page[UserOut],
    summary="List users (owner, admin)",
    description="Owners see their account's users; admins see every account's.",
    responses=problems(401, 403, 422),
)
async def list_users(
    principal: PrincipalDep, session: SessionDep, paging: PagingDep
) -> Page[UserOut]:
    rows, total = await UserService(session).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(UserOut, rows, total, paging)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    summary="Create a user (owner, admin)",
    responses=problems(400, 401, 403, 404, 409, 422),
)
async def create_user(body: UserCreate, principal: PrincipalDep, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await UserService(session).create(principal, body))


@router.get(
    "/{user_id}",
    response_model=UserOut,
    summary="Get a user (owner, admin)",
    responses=problems(401, 403, 404, 422),
)
async def get_user(user_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> UserOut:
    return UserOut.model_validate(await UserService(session).get(principal, user_id))


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    summary="Change a user's name, role, password or activity (owner, admin)",
    description="Deactivating a user or changing their password ends their sessions.",
    responses=problems(400, 401, 403, 404, 409, 422),
)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, principal: PrincipalDep, session: SessionDep
) -> UserOut:
    return UserOut.model_validate(await UserService(session).update(principal, user_id, body))


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (owner, admin)",
    responses=problems(401, 403, 404, 409, 422),
)
async def delete_user(user_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> None:
    await UserService(session).delete(principal, user_id)
