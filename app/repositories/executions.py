"""Execution queries, and the guarded updates the engine relies on for correctness
(claiming, starting a step, cancelling, the per-account concurrency slots, event numbering)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import CursorResult

from app.models import (
    Account,
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    ExecutionStep,
)
from app.repositories.base import AccountScopedRepository, Scope

ACTIVE = (ExecutionStatus.pending.value, ExecutionStatus.running.value)


def _rowcount(result: Any) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


class ExecutionRepository(AccountScopedRepository[Execution]):
    model = Execution

    async def page_filtered(
        self,
        scope: Scope,
        *,
        team_id: uuid.UUID | None,
        status: str | None,
        limit: int,
        offset: int,
    ) -> tuple[Sequence[Execution], int]:
        where = []
        if team_id is not None:
            where.append(Execution.team_id == team_id)
        if status is not None:
            where.append(Execution.status == status)
        return await self.page(scope, limit=limit, offset=offset, where=where)

    async def steps(self, execution_id: uuid.UUID) -> list[ExecutionStep]:
        rows = await self.session.scalars(
            select(ExecutionStep)
            .where(ExecutionStep.execution_id == execution_id)
            .order_by(ExecutionStep.position)
        )
        return list(rows)

    async def events(
        self, execution_id: uuid.UUID, *, after: int, limit: int
    ) -> list[ExecutionEvent]:
        rows = await self.session.scalars(
            select(ExecutionEvent)
            .where(ExecutionEvent.execution_id == execution_id, ExecutionEvent.seq > after)
            .order_by(ExecutionEvent.seq)
            .limit(limit)
        )
        return list(rows)

    async def context_history(self, execution_id: uuid.UUID) -> list[ContextEntry]:
        rows = await self.session.scalars(
            select(ContextEntry)
            .where(ContextEntry.execution_id == execution_id)
            .order_by(ContextEntry.key, ContextEntry.version)
        )
        return list(rows)

    async def context_current(self, execution_id: uuid.UUID) -> dict[str, ContextEntry]:
        latest = (
            select(ContextEntry.key, func.max(ContextEntry.version).label("version"))
            .where(ContextEntry.execution_id == execution_id)
            .group_by(ContextEntry.key)
            .subquery()
        )
        rows = await self.session.scalars(
            select(ContextEntry).join(
                latest,
                and_(
                    ContextEntry.execution_id == execution_id,
                    ContextEntry.key == latest.c.key,
                    ContextEntry.version == latest.c.version,
                ),
            )
        )
        return {row.key: row for row in rows}

    async def append_events(
        self, execution_id: uuid.UUID, events: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[ExecutionEvent]:
        """Number and store events; the counter update serialises concurrent writers."""
        if not events:
            return []
        last = await self.session.scalar(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(last_event_seq=Execution.last_event_seq + len(events))
            .returning(Execution.last_event_seq)
        )
        first = int(last or 0) - len(events) + 1
        rows = [
            ExecutionEvent(execution_id=execution_id, seq=first + i, type=kind, data=data)
            for i, (kind, data) in enumerate(events)
        ]
        self.session.add_all(rows)
        return rows

    async def reserve_slot(self, account_id: uuid.UUID, limit: int) -> bool:
        result = await self.session.execute(
            update(Account)
            .where(Account.id == account_id, Account.active_executions < limit)
            .values(active_executions=Account.active_executions + 1)
        )
        return _rowcount(result) == 1

    async def release_slot(self, account_id: uuid.UUID) -> None:
        await self.session.execute(
            update(Account)
            .where(Account.id == account_id, Account.active_executions > 0)
            .values(active_executions=Account.active_executions - 1)
        )

    async def claim(
        self, execution_id: uuid.UUID, owner: str, now: datetime, stale_before: datetime
    ) -> bool:
        """Become the execution's owner if it is pending, or running with an expired
        heartbeat (its owner died). Only one process can win."""
        was_running = Execution.status == ExecutionStatus.running.value
        result = await self.session.execute(
            update(Execution)
            .where(
                Execution.id == execution_id,
                or_(
                    Execution.status == ExecutionStatus.pending.value,
                    and_(
                        was_running,
                        or_(
                            Execution.heartbeat_at.is_(None), Execution.heartbeat_at < stale_before
                        ),
                    ),
                ),
            )
            .values(
                status=ExecutionStatus.running.value,
                owner=owner,
                heartbeat_at=now,
                started_at=func.coalesce(Execution.started_at, now),
                resumed_count=Execution.resumed_count
                + was_running.cast(Execution.resumed_count.type),
            )
        )
        return _rowcount(result) == 1

    async def beat(self, execution_id: uuid.UUID, owner: str, now: datetime) -> bool:
        """Renew the heartbeat, only while this process still owns a running execution and
        no cancel was asked for: the guard that keeps a cancelled execution from starting
        anything new."""
        result = await self.session.execute(
            update(Execution)
            .where(
                Execution.id == execution_id,
                Execution.owner == owner,
                Execution.status == ExecutionStatus.running.value,
                Execution.cancel_mode.is_(None),
            )
            .values(heartbeat_at=now)
        )
        return _rowcount(result) == 1

    async def request_cancel(self, execution_id: uuid.UUID, mode: str) -> bool:
        result = await self.session.execute(
            update(Execution)
            .where(
                Execution.id == execution_id,
                Execution.status.in_(ACTIVE),
                Execution.cancel_mode.is_(None),
            )
            .values(cancel_mode=mode)
        )
        return _rowcount(result) == 1

    async def cancel_pending(self, execution_id: uuid.UUID, mode: str, now: datetime) -> bool:
        """End an execution nobody has started yet; False if a runner claimed it first."""
        result = await self.session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.status == ExecutionStatus.pending.value)
            .values(
                status=ExecutionStatus.cancelled.value,
                status_reason="cancelled",
                cancel_mode=mode,
                finished_at=now,
            )
        )
        if _rowcount(result) != 1:
            return False
        await self.session.execute(
            update(ExecutionStep)
            .where(ExecutionStep.execution_id == execution_id)
            .values(status="cancelled", finished_at=now)
        )
        return True

    async def release_ownership(self, owner: str) -> None:
        """On a clean shutdown: let the next process resume our executions at once."""
        await self.session.execute(
            update(Execution)
            .where(Execution.owner == owner, Execution.status == ExecutionStatus.running.value)
            .values(heartbeat_at=None, owner=None)
        )

    async def abandoned(self, stale_before: datetime, limit: int = 100) -> list[uuid.UUID]:
        """Executions nobody drives: pending ones, and running ones whose heartbeat expired."""
        rows = await self.session.scalars(
            select(Execution.id)
            .where(
                or_(
                    Execution.status == ExecutionStatus.pending.value,
                    and_(
                        Execution.status == ExecutionStatus.running.value,
                        or_(
                            Execution.heartbeat_at.is_(None), Execution.heartbeat_at < stale_before
                        ),
                    ),
                )
            )
            .order_by(Execution.created_at)
            .limit(limit)
        )
        return list(rows)
