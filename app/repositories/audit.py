"""Queries of the audit trail: appending under the head's lock, reading pages and exports,
checkpoints, pruning, and the ordered reads of verification.

An append begins by moving the head on (``claim_next``): a write, so the head's row lock on
PostgreSQL (SQLite's write lock there) is held from the first statement until the commit, and
two appends never take the same number or link to the same entry."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditCheckpoint, AuditEntry, AuditHead
from app.repositories.base import Position, Scope, paginate, paginate_after

HEAD_ID = 1
VERIFY_BATCH = 1000
EXPORT_BATCH = 500


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_next(self, count: int = 1) -> tuple[int, str, int]:
        """Move the head on by ``count``: the first new entry's number, the hash it follows
        and the newest checkpoint's number."""
        claimed = await self.session.execute(
            update(AuditHead)
            .where(AuditHead.id == HEAD_ID)
            .values(seq=AuditHead.seq + count)
            .returning(AuditHead.seq, AuditHead.hash, AuditHead.checkpoint_seq)
        )
        seq, prev_hash, checkpoint_seq = claimed.one()
        return int(seq) - count + 1, str(prev_hash), int(checkpoint_seq)

    async def append(self, entries: Sequence[Mapping[str, Any]]) -> None:
        await self.session.execute(insert(AuditEntry), list(entries))

    async def set_head(
        self, seq: int, digest: str, checkpoint_seq: int, key_id: str, signature: str
    ) -> None:
        await self.session.execute(
            update(AuditHead)
            .where(AuditHead.id == HEAD_ID)
            .values(
                seq=seq,
                hash=digest,
                checkpoint_seq=checkpoint_seq,
                key_id=key_id,
                signature=signature,
            )
        )

    async def lock_head(self) -> AuditHead | None:
        """The head, locked against appends until the transaction ends (a write that changes
        nothing takes the lock on both databases)."""
        await self.session.execute(
            update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=AuditHead.seq)
        )
        return await self.head()

    async def head(self) -> AuditHead | None:
        head: AuditHead | None = await self.session.scalar(
            select(AuditHead)
            .where(AuditHead.id == HEAD_ID)
            .execution_options(populate_existing=True)
        )
        return head

    async def checkpoints(self) -> Sequence[AuditCheckpoint]:
        return (
            await self.session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
        ).all()

    async def latest_checkpoint(self) -> AuditCheckpoint | None:
        latest: AuditCheckpoint | None = await self.session.scalar(
            select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
        )
        return latest

    async def add_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        self.session.add(checkpoint)
        await self.session.flush()

    async def first_seq(self) -> int | None:
        first = await self.session.scalar(select(func.min(AuditEntry.seq)))
        return None if first is None else int(first)

    async def seqs_after(self, seq: int, limit: int) -> Sequence[int]:
        query = select(AuditEntry.seq).where(AuditEntry.seq > seq).order_by(AuditEntry.seq)
        return (await self.session.scalars(query.limit(limit))).all()

    async def entry_hash(self, seq: int) -> str | None:
        found: str | None = await self.session.scalar(
            select(AuditEntry.hash).where(AuditEntry.seq == seq)
        )
        return found

    async def entries_after(self, seq: int, limit: int) -> Sequence[Row[Any]]:
        """Up to ``limit`` entries after ``seq``, in order, as plain rows (every column)."""
        query = (
            select(*AuditEntry.__table__.columns)
            .where(AuditEntry.seq > seq)
            .order_by(AuditEntry.seq)
            .limit(limit)
        )
        return (await self.session.execute(query)).all()

    async def prune_before(self, seq: int) -> int:
        """Delete the entries and the checkpoints before ``seq`` (the entry and checkpoint at
        ``seq`` stay: verification starts there)."""
        removed = await self.session.execute(delete(AuditEntry).where(AuditEntry.seq < seq))
        await self.session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq < seq))
        return int(getattr(removed, "rowcount", 0) or 0)

    async def newest_checkpoint_before(self, cutoff: datetime) -> AuditCheckpoint | None:
        """The newest checkpoint whose entry was written before ``cutoff`` (entries before it
        may be pruned)."""
        query = (
            select(AuditCheckpoint)
            .join(AuditEntry, AuditEntry.seq == AuditCheckpoint.seq)
            .where(AuditEntry.created_at < cutoff)
            .order_by(AuditCheckpoint.seq.desc())
            .limit(1)
        )
        found: AuditCheckpoint | None = await self.session.scalar(query)
        return found

    def _filtered(
        self,
        scope: Scope,
        *,
        actor_id: uuid.UUID | None,
        action: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Any:
        query = scope.apply(select(AuditEntry), AuditEntry.account_id)
        if actor_id is not None:
            query = query.where(AuditEntry.actor_id == actor_id)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if since is not None:
            query = query.where(AuditEntry.created_at >= since)
        if until is not None:
            query = query.where(AuditEntry.created_at < until)
        return query

    async def page(
        self,
        scope: Scope,
        *,
        actor_id: uuid.UUID | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int,
        offset: int,
        after: Position | None = None,
    ) -> tuple[Sequence[AuditEntry], int, int]:
        """A page of entries, newest first, after a cursor's position (keyset) or ``offset``
        in; with the total and the page's offset."""
        query = self._filtered(
            scope, actor_id=actor_id, action=action, since=since, until=until
        ).order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
        if after is not None:
            key = (AuditEntry.created_at, AuditEntry.id)
            return await paginate_after(
                self.session, query, key, after, limit=limit, descending=True
            )
        rows, total = await paginate(self.session, query, limit=limit, offset=offset)
        return rows, total, offset

    async def export_batch(
        self,
        scope: Scope,
        *,
        after: int,
        actor_id: uuid.UUID | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Sequence[AuditEntry]:
        """The next ``EXPORT_BATCH`` entries the filters select after entry ``after``, oldest
        first."""
        query = self._filtered(scope, actor_id=actor_id, action=action, since=since, until=until)
        query = query.where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(EXPORT_BATCH)
        return (await self.session.scalars(query)).all()
