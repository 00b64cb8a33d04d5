"""Queries of the outbound delivery service and of tenant webhooks.

``DeliveryRepository`` serves the dispatcher and the API on an async session: the claim of due
deliveries (one guarded ``UPDATE ... RETURNING`` of candidates read with ``SELECT ... FOR UPDATE
SKIP LOCKED`` on PostgreSQL, so processes claiming at once take different rows without
waiting for each other; SQLite runs one writer at a time and renders no locking clause, and
the UPDATE's own guard keeps a claim single there as it does for the engine's claim of an
execution), the guarded updates that record an attempt, the dead-letter bound and the logs.
``OutboxWriter`` holds what the engine runs inside its own transactions on a synchronous
connection: the account's subscribed webhooks, and the insert of their deliveries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, case, delete, func, select, update
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Delivery, DeliveryStatus, Webhook
from app.repositories.base import (
    AccountScopedRepository,
    Position,
    paginate,
    paginate_after,
)

PENDING = DeliveryStatus.pending.value
DELIVERED = DeliveryStatus.delivered.value
DEAD = DeliveryStatus.dead.value


def _table(model: type[Any]) -> Table:
    table = model.__table__
    if not isinstance(table, Table):  # pragma: no cover - both models map one table
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


_deliveries = _table(Delivery)
_webhooks = _table(Webhook)

# What the dispatcher needs of a claimed delivery.
_CLAIMED = (
    _deliveries.c.id,
    _deliveries.c.account_id,
    _deliveries.c.webhook_id,
    _deliveries.c.kind,
    _deliveries.c.event,
    _deliveries.c.url,
    _deliveries.c.guarded,
    _deliveries.c.payload,
    _deliveries.c.sealed_secret,
    _deliveries.c.attempts,
)


def _rowcount(result: Any) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


def _owned(delivery_id: uuid.UUID, owner: str) -> Any:
    """A delivery this process is attempting: the guard of every update recording an attempt
    (a claim that outlived its lease and was taken over records nothing)."""
    return (
        (_deliveries.c.id == delivery_id)
        & (_deliveries.c.claimed_by == owner)
        & (_deliveries.c.status == PENDING)
    )


class DeliveryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, delivery: Delivery) -> None:
        self.session.add(delivery)

    # -- the dispatcher -----------------------------------------------------------------------

    async def any_due(self, now: datetime) -> bool:
        """Whether a pending delivery is due (a read: the dispatcher claims only then, so an
        idle round takes no write lock)."""
        found = await self.session.scalar(
            select(_deliveries.c.id)
            .where(_deliveries.c.status == PENDING, _deliveries.c.next_attempt_at <= now)
            .limit(1)
        )
        return found is not None

    async def pending_count(self, webhook_id: uuid.UUID, event: str) -> int:
        total = await self.session.scalar(
            select(func.count())
            .select_from(_deliveries)
            .where(
                _deliveries.c.webhook_id == webhook_id,
                _deliveries.c.event == event,
                _deliveries.c.status == PENDING,
            )
        )
        return int(total or 0)

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[Row[Any]]:
        """Take up to ``limit`` due pending deliveries for ``owner``: count the attempt and
        push their next attempt to ``lease_until`` (if this process dies sending, they are due
        again then). Only one process can take a delivery.

        Two statements in the caller's transaction: the candidates, locked (``FOR UPDATE SKIP
        LOCKED``: on PostgreSQL another process's candidates are skipped, not waited for;
        SQLite renders no lock clause, its transaction already holds the write lock), then the
        guarded update of those still due. (One ``UPDATE ... WHERE id IN (SELECT ... LIMIT n
        FOR UPDATE SKIP LOCKED)`` is not enough: PostgreSQL may run the subquery again for
        every row it updates, and then takes more than ``limit``.)"""
        candidates = (
            await self.session.scalars(
                select(_deliveries.c.id)
                .where(_deliveries.c.status == PENDING, _deliveries.c.next_attempt_at <= now)
                .order_by(_deliveries.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not candidates:
            return []
        statement = (
            update(_deliveries)
            .where(
                _deliveries.c.id.in_(candidates),
                _deliveries.c.status == PENDING,
                _deliveries.c.next_attempt_at <= now,
            )
            .values(
                attempts=_deliveries.c.attempts + 1,
                claimed_by=owner,
                next_attempt_at=lease_until,
                updated_at=now,
            )
            .returning(*_CLAIMED)
        )
        claimed = (await self.session.execute(statement)).all()
        order = {delivery_id: n for n, delivery_id in enumerate(candidates)}
        return sorted(claimed, key=lambda row: order[row.id])

    async def delivered(
        self, delivery_id: uuid.UUID, owner: str, now: datetime, status_code: int
    ) -> bool:
        result = await self.session.execute(
            update(_deliveries)
            .where(_owned(delivery_id, owner))
            .values(
                status=DELIVERED,
                claimed_by=None,
                last_status_code=status_code,
                last_error=None,
                finished_at=now,
                updated_at=now,
            )
        )
        return _rowcount(result) == 1

    async def retry_at(
        self,
        delivery_id: uuid.UUID,
        owner: str,
        now: datetime,
        next_attempt_at: datetime,
        status_code: int | None,
        error: str,
    ) -> bool:
        result = await self.session.execute(
            update(_deliveries)
            .where(_owned(delivery_id, owner))
            .values(
                claimed_by=None,
                next_attempt_at=next_attempt_at,
                last_status_code=status_code,
                last_error=error,
                updated_at=now,
            )
        )
        return _rowcount(result) == 1

    async def dead(
        self,
        delivery_id: uuid.UUID,
        owner: str,
        now: datetime,
        status_code: int | None,
        error: str,
    ) -> bool:
        result = await self.session.execute(
            update(_deliveries)
            .where(_owned(delivery_id, owner))
            .values(
                status=DEAD,
                claimed_by=None,
                last_status_code=status_code,
                last_error=error,
                finished_at=now,
                updated_at=now,
            )
        )
        return _rowcount(result) == 1

    async def trim_dead(self, account_id: uuid.UUID | None, keep: int) -> int:
        """Drop the owner's oldest dead letters beyond the newest ``keep``; how many."""
        owner = (
            _deliveries.c.account_id.is_(None)
            if account_id is None
            else _deliveries.c.account_id == account_id
        )
        beyond = (
            select(_deliveries.c.id)
            .where(_deliveries.c.status == DEAD, owner)
            .order_by(_deliveries.c.finished_at.desc(), _deliveries.c.id.desc())
            .offset(keep)
        )
        result = await self.session.execute(
            delete(_deliveries).where(_deliveries.c.id.in_(beyond.scalar_subquery()))
        )
        return _rowcount(result)

    async def release(self, owner: str, now: datetime) -> int:
        """On a clean stop: the deliveries ``owner`` was attempting are due again at once, and
        the interrupted attempt does not count."""
        result = await self.session.execute(
            update(_deliveries)
            .where(_deliveries.c.claimed_by == owner, _deliveries.c.status == PENDING)
            .values(
                claimed_by=None,
                next_attempt_at=now,
                attempts=case((_deliveries.c.attempts > 0, _deliveries.c.attempts - 1), else_=0),
                updated_at=now,
            )
        )
        return _rowcount(result)

    async def purge_delivered(self, before: datetime) -> int:
        result = await self.session.execute(
            delete(_deliveries).where(
                _deliveries.c.status == DELIVERED, _deliveries.c.finished_at < before
            )
        )
        return _rowcount(result)

    # -- logs -----------------------------------------------------------------------------------

    async def page_for_webhook(
        self,
        webhook_id: uuid.UUID,
        *,
        status: str | None,
        limit: int,
        offset: int,
        after: Position | None = None,
    ) -> tuple[Sequence[Delivery], int, int]:
        """A page of a webhook's deliveries, newest first: right after the position ``after``
        when given (keyset, on the index of webhook and creation time), else ``offset`` rows
        in; with the total and the page's offset."""
        query = select(Delivery).where(Delivery.webhook_id == webhook_id)
        if status is not None:
            query = query.where(Delivery.status == status)
        query = query.order_by(Delivery.created_at.desc(), Delivery.id.desc())
        if after is not None:
            key = (Delivery.created_at, Delivery.id)
            return await paginate_after(
                self.session, query, key, after, limit=limit, descending=True
            )
        rows, total = await paginate(self.session, query, limit=limit, offset=offset)
        return rows, total, offset

    async def get_for_webhook(
        self, webhook_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> Delivery | None:
        found: Delivery | None = await self.session.scalar(
            select(Delivery).where(Delivery.id == delivery_id, Delivery.webhook_id == webhook_id)
        )
        return found

    async def page_dead(self, *, limit: int, offset: int) -> tuple[Sequence[Delivery], int]:
        query = (
            select(Delivery)
            .where(Delivery.status == DEAD)
            .order_by(Delivery.finished_at.desc(), Delivery.id.desc())
        )
        return await paginate(self.session, query, limit=limit, offset=offset)


class WebhookRepository(AccountScopedRepository[Webhook]):
    model = Webhook

    async def count(self, account_id: uuid.UUID) -> int:
        total = await self.session.scalar(
            select(func.count()).select_from(Webhook).where(Webhook.account_id == account_id)
        )
        return int(total or 0)

    async def for_sending(self, webhook_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Webhook]:
        """The webhooks of claimed deliveries: their current URL and sealed secret."""
        rows = await self.session.scalars(select(Webhook).where(Webhook.id.in_(list(webhook_ids))))
        return {row.id: row for row in rows}


class OutboxWriter:
    """The outbox statements run inside the engine's transactions (a synchronous connection)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def enabled_webhooks(self, account_id: uuid.UUID) -> Sequence[Any]:
        """The account's enabled webhooks (rows of id, url and events)."""
        rows: Sequence[Any] = self.conn.execute(
            select(_webhooks.c.id, _webhooks.c.url, _webhooks.c.events).where(
                _webhooks.c.account_id == account_id, _webhooks.c.enabled.is_(True)
            )
        ).all()
        return rows

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(_deliveries.insert(), list(rows))
