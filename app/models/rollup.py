"""Rollups: the hourly and daily sums of model calls and of ended executions, the one home of
Renum's aggregates (usage, analytics). They are maintained as executions end
(``app.services.rollups``) and rebuildable from the raw rows (``renum analytics rebuild``).

One row per grain (``hour`` or ``day``), bucket (the UTC start of the hour or day) and key.
Its id is derived from that key (``rollup_id``), so adding into a rollup is one upsert
(``INSERT ... ON CONFLICT (id) DO UPDATE``) on SQLite and PostgreSQL alike, even for keys with
empty parts (a unique index would treat NULLs as distinct).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime
from app.models.ledger_total import TotalMoney

# The namespace of ``rollup_id``'s name-based UUIDs; fixed forever (ids are stored).
ROLLUPS_NAMESPACE = uuid.UUID("8d3c51f4-6f0e-4a8e-b2a4-1c9e7d52f0a3")


class Grain(StrEnum):
    hour = "hour"
    day = "day"


def rollup_id(table: str, grain: str, bucket: datetime, *key: object) -> uuid.UUID:
    """The id of one rollup row: the same table, grain, bucket and key always give the same
    id."""
    parts = (table, grain, bucket.isoformat(), *key)
    name = "\x1f".join("" if part is None else str(part) for part in parts)
    return uuid.uuid5(ROLLUPS_NAMESPACE, name)


class UsageRollup(Base):
    """Model calls of one grain and bucket (by the call's time) and one usage key: how many,
    their tokens, cost and summed latency."""

    __tablename__ = "usage_rollups"
    __table_args__ = (
        Index("ix_usage_rollups_account_id_grain_bucket", "account_id", "grain", "bucket"),
        Index("ix_usage_rollups_grain_bucket", "grain", "bucket"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    grain: Mapped[str] = mapped_column(String(8), nullable=False)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    team_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    agent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    paid_by: Mapped[str] = mapped_column(String(16), nullable=False)
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(TotalMoney, nullable=False)
    duration_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ExecutionRollup(Base):
    """Executions that ended in one grain and bucket (by their end), per account, team,
    strategy and final status: how many, their summed run time, tokens and cost."""

    __tablename__ = "execution_rollups"
    __table_args__ = (
        Index("ix_execution_rollups_account_id_grain_bucket", "account_id", "grain", "bucket"),
        Index("ix_execution_rollups_grain_bucket", "grain", "bucket"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    grain: Mapped[str] = mapped_column(String(8), nullable=False)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    team_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    strategy: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    executions: Mapped[int] = mapped_column(BigInteger, nullable=False)
    duration_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(TotalMoney, nullable=False)
