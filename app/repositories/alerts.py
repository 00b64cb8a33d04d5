"""Queries of the monitor's alerts, silences and alert channels' deliveries.

The evaluator reads the open alerts (pending, firing, and resolved ones still shown), writes
back those that changed and drops resolved ones past their retention; the API lists alerts
and manages silences; the dashboard reads each channel's latest delivery, so that a failing
channel shows there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AlertRecord, AlertSilence, Delivery, DeliveryStatus


@dataclass(frozen=True)
class ChannelStatus:
    """An alert channel's deliveries: the latest, and how many wait or are dead."""

    kind: str
    pending: int
    dead: int
    last_status: str | None
    last_error: str | None
    last_attempt_at: datetime | None


class AlertRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- alerts ---------------------------------------------------------------------------------

    async def all(self) -> Sequence[AlertRecord]:
        """Every alert kept: open ones and resolved ones within their retention."""
        query = select(AlertRecord).order_by(AlertRecord.started_at.desc())
        return (await self.session.scalars(query)).all()

    async def get(self, fingerprint: str) -> AlertRecord | None:
        return await self.session.get(AlertRecord, fingerprint)

    async def save(self, records: Iterable[AlertRecord]) -> None:
        """Insert or update each record (by fingerprint)."""
        for record in records:
            await self.session.merge(record)

    async def forget(self, fingerprints: Iterable[str]) -> None:
        keys = list(fingerprints)
        if keys:
            await self.session.execute(delete(AlertRecord).where(AlertRecord.fingerprint.in_(keys)))

    # -- silences -------------------------------------------------------------------------------

    def add_silence(self, silence: AlertSilence) -> None:
        self.session.add(silence)

    async def silence(self, silence_id: uuid.UUID) -> AlertSilence | None:
        return await self.session.get(AlertSilence, silence_id)

    async def silences(self, *, since: datetime) -> Sequence[AlertSilence]:
        """Silences in force or ended after ``since``, those ending soonest first."""
        query = (
            select(AlertSilence)
            .where(AlertSilence.expires_at >= since)
            .where(or_(AlertSilence.ended_at.is_(None), AlertSilence.ended_at >= since))
            .order_by(AlertSilence.expires_at, AlertSilence.id)
        )
        return (await self.session.scalars(query)).all()

    async def purge_silences(self, before: datetime) -> None:
        """Drop silences that ended before ``before``."""
        await self.session.execute(delete(AlertSilence).where(AlertSilence.expires_at < before))

    # -- channels -------------------------------------------------------------------------------

    async def channel_status(self, kinds: Sequence[str]) -> dict[str, ChannelStatus]:
        """Each channel kind's delivery counts and its latest attempted delivery."""
        if not kinds:
            return {}
        counts = await self.session.execute(
            select(Delivery.kind, Delivery.status, func.count())
            .where(Delivery.kind.in_(kinds))
            .where(Delivery.status.in_([DeliveryStatus.pending.value, DeliveryStatus.dead.value]))
            .group_by(Delivery.kind, Delivery.status)
        )
        tally: dict[tuple[str, str], int] = {(k, s): n for k, s, n in counts.all()}
        latest: dict[str, Delivery] = {}
        for kind in kinds:
            query = (
                select(Delivery)
                .where(Delivery.kind == kind, Delivery.attempts > 0)
                .order_by(Delivery.updated_at.desc())
                .limit(1)
            )
            row = (await self.session.scalars(query)).first()
            if row is not None:
                latest[kind] = row
        result = {}
        for kind in kinds:
            row = latest.get(kind)
            result[kind] = ChannelStatus(
                kind=kind,
                pending=tally.get((kind, DeliveryStatus.pending.value), 0),
                dead=tally.get((kind, DeliveryStatus.dead.value), 0),
                last_status=row.status if row else None,
                last_error=row.last_error if row else None,
                last_attempt_at=row.updated_at if row else None,
            )
        return result
