"""Accounts (tenants): platform admins create and list them."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Body, status

from app.api.deps import AdminDep, AuditDep, PagingDep, SessionDep, ViewerDep, to_page
from app.api.router import PrefixRouter
from app.schemas.accounts import ACCOUNT_CREATE_EXAMPLES, AccountCreate, AccountOut
from app.schemas.common import Page, link, links, problems
from app.services.accounts import AccountService

router = PrefixRouter(prefix="/accounts", tags=["accounts"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AccountOut,
    summary="Create an account and its first owner (admin)",
    responses={
        **links(
            201,
            "The account; its owner can log in.",
            GetAccount=link("get_account", "Read the account.", account_id="$response.body#/id"),
            CreateUser=link(
                "create_user",
                "Add a user to the account.",
                requestBody={"account_id": "$response.body#/id"},
            ),
            LogInAsOwner=link(
                "login",
                "Log in as the account's first owner.",
                requestBody={
                    "username": "$request.body#/owner_email",
                    "password": "$request.body#/owner_password",
                },
            ),
        ),
        **problems(400, 401, 403, 409, 422),
    },
)
async def create_account(
    body: Annotated[AccountCreate, Body(openapi_examples=ACCOUNT_CREATE_EXAMPLES)],
    principal: AdminDep,
    session: SessionDep,
    audit: AuditDep,
) -> AccountOut:
    account = await AccountService(session, audit).create(principal, body)
    return AccountOut.model_validate(account)


@router.get(
    "",
    response_model=Page[AccountOut],
    summary="List accounts (admin)",
    responses={
        **links(
            200,
            "One page of accounts.",
            GetAccount=link(
                "get_account", "Read the first account.", account_id="$response.body#/items/0/id"
            ),
        ),
        **problems(401, 403, 422),
    },
)
async def list_accounts(
    principal: AdminDep, session: SessionDep, paging: PagingDep
) -> Page[AccountOut]:
    rows, total = await AccountService(session).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(AccountOut, rows, total, paging)


@router.get(
    "/{account_id}",
    response_model=AccountOut,
    summary="Get an account",
    description="Admins read any account; other users only their own.",
    responses=problems(401, 404, 422),
)
async def get_account(
    account_id: uuid.UUID, principal: ViewerDep, session: SessionDep
) -> AccountOut:
    return AccountOut.model_validate(await AccountService(session).get(principal, account_id))
