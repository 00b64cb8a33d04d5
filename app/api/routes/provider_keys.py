"""Users' own model-provider keys: stored encrypted, never returned, shown masked."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Body, status

from app.api.deps import AuditDep, BoxDep, MemberDep, PagingDep, SessionDep, ViewerDep, to_page
from app.api.router import PrefixRouter
from app.schemas.agents import PROVIDER_KEY_CREATE_EXAMPLES, ProviderKeyCreate, ProviderKeyOut
from app.schemas.common import Page, link, links, problems
from app.services.provider_keys import ProviderKeyService

router = PrefixRouter(prefix="/provider-keys", tags=["provider-keys"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProviderKeyOut,
    summary="Store a provider key",
    description="The key is encrypted (AES-GCM) at rest and never returned; agents refer to "
    "it by id.",
    responses={
        **links(
            201,
            "The stored key, masked.",
            DeleteProviderKey=link(
                "delete_provider_key", "Delete the key.", key_id="$response.body#/id"
            ),
        ),
        **problems(400, 401, 403, 422),
    },
)
async def create_provider_key(
    body: Annotated[ProviderKeyCreate, Body(openapi_examples=PROVIDER_KEY_CREATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    box: BoxDep,
    audit: AuditDep,
) -> ProviderKeyOut:
    return ProviderKeyOut.model_validate(
        await ProviderKeyService(session, box, audit).create(principal, body)
    )


@router.get(
    "",
    response_model=Page[ProviderKeyOut],
    summary="List provider keys (masked)",
    description="Owners and admins see the account's keys; others their own.",
    responses={
        **links(
            200,
            "One page of keys.",
            DeleteProviderKey=link(
                "delete_provider_key",
                "Delete the first key.",
                key_id="$response.body#/items/0/id",
            ),
        ),
        **problems(401, 422),
    },
)
async def list_provider_keys(
    principal: ViewerDep, session: SessionDep, box: BoxDep, paging: PagingDep
) -> Page[ProviderKeyOut]:
    rows, total = await ProviderKeyService(session, box).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(ProviderKeyOut, rows, total, paging)


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a provider key",
    description="Refused (409) while an agent uses it.",
    responses=problems(401, 403, 404, 409, 422),
)
async def delete_provider_key(
    key_id: uuid.UUID, principal: MemberDep, session: SessionDep, box: BoxDep, audit: AuditDep
) -> None:
    await ProviderKeyService(session, box, audit).delete(principal, key_id)
