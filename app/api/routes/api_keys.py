"""API keys for machines: create (the secret is shown once), list, revoke."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Body, status

from app.api.deps import AuditDep, MemberDep, PagingDep, SessionDep, ViewerDep, to_page
from app.api.router import PrefixRouter
from app.schemas.api_keys import API_KEY_CREATE_EXAMPLES, ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from app.schemas.common import Page, link, links, problems
from app.services.api_keys import ApiKeyService

router = PrefixRouter(prefix="/api-keys", tags=["api-keys"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    description="The response is the only time the key is shown. Its role defaults to the "
    "caller's and can never exceed it.",
    responses={
        **links(
            201,
            "The key, with its secret.",
            RevokeApiKey=link("revoke_api_key", "Revoke the key.", key_id="$response.body#/id"),
        ),
        **problems(400, 401, 403, 422),
    },
)
async def create_api_key(
    body: Annotated[ApiKeyCreate, Body(openapi_examples=API_KEY_CREATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    audit: AuditDep,
) -> ApiKeyCreated:
    key, secret = await ApiKeyService(session, audit).create(principal, body)
    return ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key).model_dump(), "key": secret}
    )


@router.get(
    "",
    response_model=Page[ApiKeyOut],
    summary="List API keys (never their secrets)",
    description="Owners and admins see every key of the account; others their own.",
    responses={
        **links(
            200,
            "One page of keys.",
            RevokeApiKey=link(
                "revoke_api_key", "Revoke the first key.", key_id="$response.body#/items/0/id"
            ),
        ),
        **problems(401, 422),
    },
)
async def list_api_keys(
    principal: ViewerDep, session: SessionDep, paging: PagingDep
) -> Page[ApiKeyOut]:
    rows, total = await ApiKeyService(session).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(ApiKeyOut, rows, total, paging)


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    responses=problems(401, 403, 404, 422),
)
async def revoke_api_key(
    key_id: uuid.UUID, principal: MemberDep, session: SessionDep, audit: AuditDep
) -> None:
    await ApiKeyService(session, audit).revoke(principal, key_id)
