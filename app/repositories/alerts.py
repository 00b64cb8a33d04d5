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

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AlertEvaluation, AlertRecord, AlertSilence, Delivery, DeliveryStatus

# The rule name of reported alerts (``app.capabilities.monitor.alerting.REPORTED``) and their
# states: repeated here, as a repository does not import a capability.
REPORTED = "reported:"
RESOLVED = "resolved"
EVALUATION = "rules"


@dataclass(frozen=True)
class Evaluation:
    """The last evaluation of the rules: when, and by which process (``host:pid``)."""

    at: datetime
    by: str


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

    async def lock(self, fingerprint: str) -> None:
        """Serialise the writers of one alert until the transaction ends: a PostgreSQL
        transaction-level advisory lock on the fingerprint (SQLite runs one writer at a
        time already: its write transactions begin immediately)."""
        if self.session.get_bind().dialect.name == "postgresql":
            key = int(fingerprint[:16], 16) - (1 << 63)  # into the signed bigint range
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    async def get(self, fingerprint: str) -> AlertRecord | None:
        return await self.session.get(AlertRecord, fingerprint)

    async def save(self, records: Iterable[AlertRecord]) -> None:
        """Insert or update each record (by fingerprint)."""
        for record in records:
            await self.session.merge(record)

    async def forget(self, fingerprints: Iterable[str]) -> None:
        """Drop the evaluator's alerts it no longer keeps; a reported one only while it is
        still resolved (another process may have reported it again meanwhile)."""
        keys = list(fingerprints)
        if keys:
            reported = AlertRecord.rule.startswith(REPORTED, autoescape=True)
            still_resolved = AlertRecord.state == RESOLVED
            await self.session.execute(
                delete(AlertRecord)
                .where(AlertRecord.fingerprint.in_(keys))
                .where(or_(~reported, still_resolved))
            )

    async def evaluated(self, by: str, at: datetime) -> None:
        """Record an evaluation (the heartbeat the API and the dashboard show)."""
        await self.session.merge(AlertEvaluation(name=EVALUATION, by=by, evaluated_at=at))

    async def last_evaluation(self) -> Evaluation | None:
        row = await self.session.get(AlertEvaluation, EVALUATION)
        return Evaluation(row.evaluated_at, row.by) if row is not None else None

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
