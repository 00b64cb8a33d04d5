"""Tenant webhooks and the deliveries of the outbound delivery service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import AnyHttpUrl, Field, UrlConstraints, model_validator

from app.schemas.common import RequestModel, ResponseModel, body_example

WebhookEvent = Literal[
    "execution.completed", "execution.failed", "execution.cancelled", "execution.budget_exceeded"
]
# The events a webhook can subscribe to, in the order the docs list them.
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)
TEST_EVENT = "webhook.test"  # what the test action sends; not subscribable

DeliveryStatusName = Literal["pending", "delivered", "dead"]

WebhookUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2000)]

URL_HELP = (
    "Where events are POSTed: http or https, no user information, query or fragment. Its host "
    "must be publicly routable on an allowed port unless the operator allows it "
    "(`RENUM_EGRESS__ALLOW`), else 422; the address it resolves to is checked again at every "
    "delivery, and redirects are not followed."
)
EVENTS_HELP = (
    "The execution events to deliver: `execution.completed`, `execution.failed`, "
    "`execution.cancelled` (on request) and `execution.budget_exceeded` (its token, cost or "
    "time budget ran out)."
)


class WebhookCreate(RequestModel):
    url: WebhookUrl = Field(description=URL_HELP, examples=["https://hooks.example.com/renum"])
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS),
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description=f"{EVENTS_HELP} Default: all of them.",
        examples=[["execution.completed", "execution.failed"]],
    )
    description: str | None = Field(
        default=None, max_length=200, examples=["Notify the build pipeline"]
    )
    enabled: bool = Field(default=True, strict=True, description="Off, no event is queued for it.")


WEBHOOK_CREATE_EXAMPLES = body_example(
    "pipeline",
    "Tell a build pipeline how executions end",
    {
        "url": "https://hooks.example.com/renum",
        "events": ["execution.completed", "execution.failed"],
        "description": "Notify the build pipeline",
        "enabled": True,
    },
    "The answer shows the signing `secret` once. Its `url` must be one the backend may reach.",
)


class WebhookUpdate(RequestModel):
    # Left out, a field keeps its value; those typed without `None` cannot be null.
    url: WebhookUrl = Field(default=None, description=URL_HELP)  # type: ignore[assignment]
    events: list[WebhookEvent] = Field(
        default=None,  # type: ignore[arg-type]
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description=EVENTS_HELP,
    )
    description: str | None = Field(default=None, max_length=200)
    enabled: bool = Field(  # type: ignore[assignment]
        default=None, strict=True, description="Off, no event is queued for it."
    )


WEBHOOK_UPDATE_EXAMPLES = body_example(
    "more_events",
    "Also hear of budgets running out",
    {
        "events": ["execution.completed", "execution.failed", "execution.budget_exceeded"],
        "description": "Notify the build pipeline, budgets included",
    },
    "Fields left out keep their value; `enabled: false` pauses the webhook.",
)


class WebhookOut(ResponseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    secret: str = Field(
        description="The signing secret (`whsec_...`). Shown only in this response; store it "
        "now. Deliveries carry `Renum-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "
        '"<t>.<body>">`.',
        examples=["whsec_9f8Jr3kq0Zb4y2P1vXcA6mN5tLwQe7Hs"],
    )


class DeliveryOut(ResponseModel):
    id: uuid.UUID = Field(
        description="Sent as the `Renum-Delivery` header (and a webhook payload's `id`): the "
        "same on every attempt, so a receiver can drop repeats."
    )
    webhook_id: uuid.UUID | None
    event: str = Field(examples=["execution.completed"])
    status: DeliveryStatusName = Field(
        description="`pending` (waiting for its next attempt), `delivered` (answered 2xx) or "
        "`dead` (out of attempts, or refused by the egress policy)."
    )
    attempts: int
    next_attempt_at: datetime | None = Field(description="While pending: when it is tried next.")
    last_status_code: int | None = Field(description="The HTTP status of the last attempt.")
    last_error: str | None = Field(
        description="Why the last attempt failed, e.g. `HTTP 500` or `timed out after 10s`."
    )
    payload: dict[str, Any] = Field(description="The JSON body sent.")
    created_at: datetime
    finished_at: datetime | None = Field(description="When it was delivered or dead-lettered.")

    @model_validator(mode="after")
    def _next_attempt_only_while_pending(self) -> Self:
        if self.status != "pending":
            self.next_attempt_at = None
        return self


class DeadLetterOut(DeliveryOut):
    account_id: uuid.UUID | None = Field(description="The owner; null for the platform's own.")
    kind: str = Field(description="What sent it: `webhook`, `alert`, ...", examples=["webhook"])
    destination: str = Field(
        description="Scheme, host and port of the URL it went to (its path may hold a token, "
        "so it is not shown).",
        examples=["https://hooks.example.com"],
    )
