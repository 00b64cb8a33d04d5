"""Tenant webhooks: endpoints an account registers for its executions' events, delivered by
the outbound delivery service (``app.services.delivery``).

How an execution's end reaches the webhooks without losing any, or sending any twice: the
engine calls :func:`enqueue_execution_ended` inside the very transaction that commits the
execution's terminal status (``ExecutionEngine._write``), so the deliveries are committed
exactly when the end is, by the one process whose guarded update ended it (the guard lets
only one transaction end an execution). A process dying before the commit loses neither:
the end is not committed either, and whoever resumes the execution ends it, and queues the
deliveries, then. The alternative, a poller reading ``execution_events`` behind a persisted
cursor, needs a cursor that cannot skip events committed out of order (PostgreSQL assigns
ids before commit) and a leader among processes; the outbox in the same transaction needs
neither, at the cost of one indexed read of the account's webhooks when an execution ends.

Owners (and admins) manage webhooks; every signed-in member of the account may read them and
their delivery log. The secret is made here, shown once (create, rotate), stored sealed and
bound to its row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.egress import EgressGuard, EgressRefused
from app.core.errors import Conflict, NotFound, TooManyRequests, ValidationFailed
from app.db.base import utcnow
from app.models import Delivery, Execution, ExecutionStatus, Role, Webhook
from app.repositories.base import Position
from app.repositories.deliveries import DeliveryRepository, OutboxWriter, WebhookRepository
from app.schemas.webhooks import TEST_EVENT, WebhookCreate, WebhookUpdate
from app.services.delivery import (
    Destination,
    enqueue,
    new_delivery,
    new_secret,
    webhook_secret_aad,
)
from app.services.principal import Principal

if TYPE_CHECKING:
    from app.services.engine.state import Changes

KIND = "webhook"
MAX_ERROR_CHARS = 1000
MAX_PENDING_TESTS = 3  # test deliveries of one webhook waiting at once


def execution_event(status: ExecutionStatus, reason: str | None) -> str:
    """The webhook event of an execution's end: completed, failed, budget_exceeded (its token
    or cost budget, or its time budget: ``timed_out``) or cancelled (on request)."""
    if status is ExecutionStatus.completed:
        return "execution.completed"
    if status is ExecutionStatus.failed:
        return "execution.failed"
    if status is ExecutionStatus.timed_out or reason == "budget_exceeded":
        return "execution.budget_exceeded"
    return "execution.cancelled"


def iso(moment: datetime | None) -> str | None:
    """An instant as the API writes it: ISO 8601 in UTC with ``Z``."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def money(value: Decimal) -> str:
    return format(Decimal(value).normalize(), "f")


def envelope(
    delivery_id: uuid.UUID, event: str, now: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    """A webhook's body: the delivery id (as in ``Renum-Delivery``), the event, when it was
    queued, and the event's data."""
    return {"id": str(delivery_id), "type": event, "created_at": iso(now), "data": data}


@dataclass(frozen=True)
class ExecutionEnd:
    """What a webhook hears of an execution's end."""

    execution_id: uuid.UUID
    team_id: uuid.UUID
    account_id: uuid.UUID
    status: ExecutionStatus
    reason: str
    error: str | None
    totals: tuple[int, int, Decimal]
    started_at: datetime | None
    finished_at: datetime

    def data(self) -> dict[str, Any]:
        tokens_in, tokens_out, cost = self.totals
        return {
            "execution_id": str(self.execution_id),
            "team_id": str(self.team_id),
            "account_id": str(self.account_id),
            "status": self.status.value,
            "reason": self.reason,
            "error": self.error[:MAX_ERROR_CHARS] if self.error else None,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": money(cost),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


def enqueue_execution_end(conn: Connection, end: ExecutionEnd) -> int:
    """Queue ``end`` for each enabled webhook of the account that subscribed to its event, in
    the transaction that commits the end; how many were queued. The payload holds no prompt,
    output or result: ids, status, reason, error (none for content sealed at rest), totals,
    times."""
    writer = OutboxWriter(conn)
    event = execution_event(end.status, end.reason)
    hooks = [hook for hook in writer.enabled_webhooks(end.account_id) if event in hook.events]
    data = end.data()
    rows = []
    for hook in hooks:
        delivery_id = uuid.uuid4()
        rows.append(
            new_delivery(
                Destination.tenant(hook.url, end.account_id, hook.id),
                envelope(delivery_id, event, end.finished_at, data),
                event=event,
                kind=KIND,
                now=end.finished_at,
                delivery_id=delivery_id,
            )
        )
    writer.add(rows)
    return len(rows)


def enqueue_execution_ended(conn: Connection, changes: Changes, now: datetime) -> int:
    """:func:`enqueue_execution_end` for the engine: ``changes`` ends its execution, in the
    engine's transaction on ``conn``."""
    run, finish = changes.run, changes.finish
    if finish is None:
        return 0
    end = ExecutionEnd(
        execution_id=run.id,
        team_id=run.team_id,
        account_id=run.account_id,
        status=finish.status,
        reason=finish.reason,
        # An error text may quote the content: kept out of the stored payload of an execution
        # whose content is sealed at rest (the API gives it to those who may read it).
        error=None if run.content_key_id else finish.error,
        totals=changes.totals,
        started_at=run.started_at,
        finished_at=now,
    )
    return enqueue_execution_end(conn, end)


async def enqueue_cancelled_before_start(
    session: AsyncSession, execution: Execution, now: datetime
) -> int:
    """:func:`enqueue_execution_end` for an execution cancelled while still pending (the API
    ends it, not the engine), in the session's transaction that cancels it."""
    end = ExecutionEnd(
        execution_id=execution.id,
        team_id=execution.team_id,
        account_id=execution.account_id,
        status=ExecutionStatus.cancelled,
        reason="cancelled",
        error=None,
        totals=(0, 0, Decimal(0)),
        started_at=None,
        finished_at=now,
    )
    connection = await session.connection()
    return await connection.run_sync(lambda conn: enqueue_execution_end(conn, end))


class WebhookService:
    def __init__(self, session: AsyncSession, box: SecretBox, settings: Settings) -> None:
        self.session = session
        self.box = box
        self.settings = settings
        self.webhooks = WebhookRepository(session)
        self.deliveries = DeliveryRepository(session)

    def _check_url(self, url: str) -> None:
        try:
            EgressGuard.from_settings(self.settings).check_url(url)
        except EgressRefused as refused:
            raise ValidationFailed.at(
                "/body/url", f"refused by the egress policy: {refused.detail}", "egress_refused"
            ) from None

    def _seal(self, webhook: Webhook, secret: str) -> None:
        webhook.sealed_secret = self.box.seal(
            secret, webhook_secret_aad(webhook.account_id, webhook.id)
        )
        webhook.encryption_key_id = self.box.current_key_id

    async def create(self, principal: Principal, data: WebhookCreate) -> tuple[Webhook, str]:
        """A new webhook of the caller's account, and its secret (returned only now)."""
        principal.require(Role.owner)
        url = str(data.url)
        self._check_url(url)
        limit = self.settings.deliveries.webhooks_per_account
        if await self.webhooks.count(principal.account_id) >= limit:
            raise Conflict(f"The account has {limit} webhooks, the most allowed; delete one first.")
        secret = new_secret()
        webhook = Webhook(
            id=uuid.uuid4(),
            account_id=principal.account_id,
            created_by=principal.user_id,
            url=url,
            description=data.description,
            events=list(dict.fromkeys(data.events)),
            enabled=data.enabled,
        )
        self._seal(webhook, secret)
        self.webhooks.add(webhook)
        await self.session.commit()
        return webhook, secret

    async def page(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[Sequence[Webhook], int]:
        return await self.webhooks.page(principal.scope, limit=limit, offset=offset)

    async def get(self, principal: Principal, webhook_id: uuid.UUID) -> Webhook:
        webhook = await self.webhooks.get(webhook_id, principal.scope)
        if webhook is None:
            raise NotFound("No webhook with this id.")
        return webhook

    async def update(
        self, principal: Principal, webhook_id: uuid.UUID, data: WebhookUpdate
    ) -> Webhook:
        principal.require(Role.owner)
        webhook = await self.get(principal, webhook_id)
        changes = data.model_dump(exclude_unset=True)
        for name in ("url", "events", "enabled"):
            if name in changes and changes[name] is None:
                raise ValidationFailed.at(f"/body/{name}", f"{name} cannot be null", "null")
        if "url" in changes:
            url = str(data.url)
            self._check_url(url)
            webhook.url = url
        if "events" in changes:
            webhook.events = list(dict.fromkeys(data.events))
        if "description" in changes:
            webhook.description = data.description
        if "enabled" in changes:
            webhook.enabled = data.enabled
        await self.session.commit()
        return webhook

    async def delete(self, principal: Principal, webhook_id: uuid.UUID) -> None:
        """Delete the webhook, its delivery log and its deliveries not yet sent."""
        principal.require(Role.owner)
        webhook = await self.get(principal, webhook_id)
        await self.webhooks.delete(webhook)
        await self.session.commit()

    async def rotate_secret(
        self, principal: Principal, webhook_id: uuid.UUID
    ) -> tuple[Webhook, str]:
        """A new secret, effective at once (deliveries still pending are signed with it)."""
        principal.require(Role.owner)
        webhook = await self.get(principal, webhook_id)
        secret = new_secret()
        self._seal(webhook, secret)
        await self.session.commit()
        return webhook, secret

    async def send_test(self, principal: Principal, webhook_id: uuid.UUID) -> Delivery:
        """Queue a ``webhook.test`` delivery (also for a disabled webhook: test it first); a
        few may wait at once per webhook (the test action sends requests to any URL that
        passes the egress policy: it must not be a way to flood one)."""
        principal.require(Role.owner)
        webhook = await self.get(principal, webhook_id)
        if await self.deliveries.pending_count(webhook.id, TEST_EVENT) >= MAX_PENDING_TESTS:
            raise TooManyRequests(
                f"{MAX_PENDING_TESTS} test deliveries of this webhook are still waiting to be "
                "sent; follow them in its delivery log."
            )
        delivery_id = uuid.uuid4()
        data = {"webhook_id": str(webhook.id), "message": "A test delivery from Renum."}
        delivery = await enqueue(
            self.session,
            Destination.tenant(webhook.url, webhook.account_id, webhook.id),
            envelope(delivery_id, TEST_EVENT, utcnow(), data),
            event=TEST_EVENT,
            kind=KIND,
            delivery_id=delivery_id,
        )
        await self.session.commit()
        return delivery

    async def delivery_log(
        self,
        principal: Principal,
        webhook_id: uuid.UUID,
        *,
        status: str | None,
        limit: int,
        offset: int,
        after: Position | None = None,
    ) -> tuple[Sequence[Delivery], int, int]:
        """A page of the webhook's delivery log, newest first (``page_for_webhook``), with
        the total and the page's offset."""
        webhook = await self.get(principal, webhook_id)
        return await self.deliveries.page_for_webhook(
            webhook.id, status=status, limit=limit, offset=offset, after=after
        )

    async def delivery(
        self, principal: Principal, webhook_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> Delivery:
        webhook = await self.get(principal, webhook_id)
        found = await self.deliveries.get_for_webhook(webhook.id, delivery_id)
        if found is None:
            raise NotFound("No delivery with this id for this webhook.")
        return found
