"""Tenant webhooks (register, read, change, delete, rotate the secret, test, the delivery log)
and the platform's dead letters of the outbound delivery service (admins)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Body, Query, status

from app.api.deps import (
    AdminDep,
    BoxDep,
    CursorPagingDep,
    OwnerDep,
    PagingDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    ViewerDep,
    to_page,
)
from app.api.router import PrefixRouter
from app.api.server_rules import EXTENSION, ServerRule
from app.core.errors import PROBLEM_MEDIA_TYPE
from app.schemas.common import CursorPage, Page, link, links, problems
from app.schemas.webhooks import (
    WEBHOOK_CREATE_EXAMPLES,
    WEBHOOK_UPDATE_EXAMPLES,
    DeadLetterOut,
    DeliveryOut,
    DeliveryStatusName,
    WebhookCreate,
    WebhookOut,
    WebhookUpdate,
    WebhookWithSecret,
)
from app.services.delivery import dead_letters, origin_of
from app.services.webhooks import WebhookService

webhooks = PrefixRouter(prefix="/webhooks", tags=["webhooks"])
ops = PrefixRouter(prefix="/ops/deliveries", tags=["ops"])

WEBHOOK_ID = "$response.body#/id"
URL_RULE = ServerRule(
    "/body/url",
    "egress_refused",
    "A webhook URL must pass the operator's egress policy (publicly routable host on an "
    "allowed port, or an allowed destination).",
)


def _invalid_with_url_rule() -> dict[int | str, Any]:
    """The 422 of an operation that takes a webhook URL, with the rule only the server
    judges (read by the contract tests as ``x-server-rules``)."""
    response = problems(422)[422]
    description = (
        f"{response['description']}\n\nBeyond the schema, the server refuses (rules only it "
        f"can judge):\n\n- `{URL_RULE.pointer}` (`{URL_RULE.type}`): {URL_RULE.description}"
    )
    return {
        422: {
            **response,
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {}},
            EXTENSION: [URL_RULE.document()],
        }
    }


def _webhook_links(
    status: int, description: str, webhook_id: str = WEBHOOK_ID
) -> dict[int | str, Any]:
    """Links from a response carrying one webhook to what can be done with it."""
    return links(
        status,
        description,
        GetWebhook=link("get_webhook", "Read the webhook.", webhook_id=webhook_id),
        UpdateWebhook=link("update_webhook", "Change the webhook.", webhook_id=webhook_id),
        TestWebhook=link("test_webhook", "Send it a test delivery.", webhook_id=webhook_id),
        ListWebhookDeliveries=link(
            "list_webhook_deliveries", "Read its delivery log.", webhook_id=webhook_id
        ),
        RotateWebhookSecret=link(
            "rotate_webhook_secret", "Replace its secret.", webhook_id=webhook_id
        ),
        DeleteWebhook=link("delete_webhook", "Delete the webhook.", webhook_id=webhook_id),
    )


def _with_secret(webhook: Any, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret.model_validate(
        {**WebhookOut.model_validate(webhook).model_dump(), "secret": secret}
    )


@webhooks.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookWithSecret,
    summary="Register a webhook",
    description="An endpoint that receives a signed JSON `POST` when an execution of the "
    "account ends as one of `events`. The response is the only time the signing secret is "
    "shown. Owners and admins register webhooks; an account has at most "
    "`RENUM_DELIVERIES__WEBHOOKS_PER_ACCOUNT` (409 beyond).",
    responses={
        **_webhook_links(201, "The webhook, with its secret."),
        **problems(400, 401, 403, 409),
        **_invalid_with_url_rule(),
    },
)
async def create_webhook(
    body: Annotated[WebhookCreate, Body(openapi_examples=WEBHOOK_CREATE_EXAMPLES)],
    principal: OwnerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> WebhookWithSecret:
    webhook, secret = await WebhookService(session, box, settings).create(principal, body)
    return _with_secret(webhook, secret)


@webhooks.get(
    "",
    response_model=Page[WebhookOut],
    summary="List webhooks",
    description="The account's webhooks (admins: every account's), oldest first; never "
    "their secrets.",
    responses={
        **links(
            200,
            "One page of webhooks.",
            GetWebhook=link(
                "get_webhook", "Read the first webhook.", webhook_id="$response.body#/items/0/id"
            ),
        ),
        **problems(401, 422),
    },
)
async def list_webhooks(
    principal: ViewerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
    paging: PagingDep,
) -> Page[WebhookOut]:
    rows, total = await WebhookService(session, box, settings).page(
        principal, limit=paging.limit, offset=paging.offset
    )
    return to_page(WebhookOut, rows, total, paging)


@webhooks.get(
    "/{webhook_id}",
    response_model=WebhookOut,
    summary="Get a webhook",
    responses={**_webhook_links(200, "The webhook."), **problems(401, 404, 422)},
)
async def get_webhook(
    webhook_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> WebhookOut:
    return WebhookOut.model_validate(
        await WebhookService(session, box, settings).get(principal, webhook_id)
    )


@webhooks.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    summary="Change a webhook",
    description="Its URL, events, description, or `enabled` (off: no event is queued for it; "
    "deliveries already queued are still sent). A new URL applies to pending retries too.",
    responses={
        **_webhook_links(200, "The changed webhook."),
        **problems(400, 401, 403, 404),
        **_invalid_with_url_rule(),
    },
)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: Annotated[WebhookUpdate, Body(openapi_examples=WEBHOOK_UPDATE_EXAMPLES)],
    principal: OwnerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> WebhookOut:
    webhook = await WebhookService(session, box, settings).update(principal, webhook_id, body)
    return WebhookOut.model_validate(webhook)


@webhooks.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook",
    description="Its delivery log and its deliveries not yet sent go with it.",
    responses=problems(401, 403, 404, 422),
)
async def delete_webhook(
    webhook_id: uuid.UUID,
    principal: OwnerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> None:
    await WebhookService(session, box, settings).delete(principal, webhook_id)


@webhooks.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookWithSecret,
    summary="Rotate a webhook's secret",
    description="A new signing secret replaces the old one at once (deliveries still pending "
    "are signed with it). The response is the only time it is shown.",
    responses={
        **_webhook_links(200, "The webhook, with its new secret."),
        **problems(401, 403, 404, 422),
    },
)
async def rotate_webhook_secret(
    webhook_id: uuid.UUID,
    principal: OwnerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> WebhookWithSecret:
    service = WebhookService(session, box, settings)
    webhook, secret = await service.rotate_secret(principal, webhook_id)
    return _with_secret(webhook, secret)


def _delivery_links(status: int, description: str, delivery_id: str) -> dict[int | str, Any]:
    return links(
        status,
        description,
        GetWebhookDelivery=link(
            "get_webhook_delivery",
            "Follow the delivery.",
            webhook_id="$request.path.webhook_id",
            delivery_id=delivery_id,
        ),
    )


@webhooks.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    summary="Send a test delivery",
    description="Queues a signed `webhook.test` delivery to the webhook (disabled ones too), "
    "sent in the background like any other; follow it in the delivery log. At most three "
    "test deliveries of a webhook wait at once (429 beyond).",
    responses={
        **_delivery_links(202, "The queued delivery.", "$response.body#/id"),
        **problems(401, 403, 404, 422, 429),
    },
)
async def test_webhook(
    webhook_id: uuid.UUID,
    principal: OwnerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> DeliveryOut:
    delivery = await WebhookService(session, box, settings).send_test(principal, webhook_id)
    runtime.deliveries.kick()
    return DeliveryOut.model_validate(delivery)


@webhooks.get(
    "/{webhook_id}/deliveries",
    response_model=CursorPage[DeliveryOut],
    summary="List a webhook's deliveries",
    description="The delivery log, newest first: every event queued for the webhook and how "
    "its attempts went. Delivered ones stay for `RENUM_DELIVERIES__RETENTION_DAYS`. Read a "
    "long log page by page with `cursor`: each page's `next_cursor` says where the next one "
    "starts.",
    responses={
        **_delivery_links(200, "One page of deliveries.", "$response.body#/items/0/id"),
        **problems(401, 404, 422),
    },
)
async def list_webhook_deliveries(
    webhook_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
    paging: CursorPagingDep,
    status_: Annotated[
        DeliveryStatusName | None, Query(alias="status", description="Only these.")
    ] = None,
) -> CursorPage[DeliveryOut]:
    rows, total, offset = await WebhookService(session, box, settings).delivery_log(
        principal,
        webhook_id,
        status=status_,
        limit=paging.limit,
        offset=paging.offset,
        after=paging.after,
    )
    return paging.page(DeliveryOut, rows, total, offset)


@webhooks.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    summary="Get a webhook delivery",
    responses={
        **_delivery_links(200, "The delivery.", "$response.body#/id"),
        **problems(401, 404, 422),
    },
)
async def get_webhook_delivery(
    webhook_id: uuid.UUID,
    delivery_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    box: BoxDep,
    settings: SettingsDep,
) -> DeliveryOut:
    service = WebhookService(session, box, settings)
    return DeliveryOut.model_validate(await service.delivery(principal, webhook_id, delivery_id))


@ops.get(
    "/dead",
    response_model=Page[DeadLetterOut],
    summary="List dead letters",
    description="Deliveries of every owner (tenant webhooks, the platform's alerts) that ran "
    "out of attempts or were refused by the egress policy, newest first. Each owner keeps "
    "at most `RENUM_DELIVERIES__DEAD_LETTER_MAX`; older ones are dropped. Platform admins only.",
    responses=problems(401, 403, 422),
)
async def list_dead_letters(
    _: AdminDep, session: SessionDep, paging: PagingDep
) -> Page[DeadLetterOut]:
    rows, total = await dead_letters(session, limit=paging.limit, offset=paging.offset)
    items = [
        DeadLetterOut.model_validate(
            {
                **DeliveryOut.model_validate(row).model_dump(),
                "account_id": row.account_id,
                "kind": row.kind,
                "destination": origin_of(row.url),
            }
        )
        for row in rows
    ]
    return Page[DeadLetterOut](items=items, total=total, limit=paging.limit, offset=paging.offset)


router = PrefixRouter()
router.include_router(webhooks)
router.include_router(ops)
