"""Daily totals of purged ledger rows: what the retention purge keeps of the model calls it
removes, so that usage figures stay the same after a purge.

One row per account, UTC day and everything ``GET /api/v1/usage`` groups or filters by (team,
agent, user, provider, model, who paid), with the calls, tokens and cost of the ledger rows
folded into it. Its id is derived from that key (``total_id``), so the purge adds into an
existing row with one upsert (``INSERT ... ON CONFLICT (id) DO UPDATE``) on SQLite and
PostgreSQL alike, even for keys with empty parts (a unique index would treat NULLs as
distinct).
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Numeric, String, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base

# Wider than a ledger row's cost (Numeric(18, 8)): a day's total of many calls.
TotalMoney = Numeric(20, 8)

# The namespace of ``total_id``'s name-based UUIDs; fixed forever (ids are stored).
TOTALS_NAMESPACE = uuid.UUID("5a0b7f62-3c1e-4c55-9a8e-2f4d8e0c6b11")


def total_id(
    account_id: uuid.UUID,
    day: date,
    team_id: uuid.UUID | None,
    agent_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
    provider: str,
    model: str,
    paid_by: str,
) -> uuid.UUID:
    """The id of the daily total of one key: the same key always gives the same id."""
    parts = (account_id, day.isoformat(), team_id, agent_id, user_id, provider, model, paid_by)
    name = "\x1f".join("" if part is None else str(part) for part in parts)
    return uuid.uuid5(TOTALS_NAMESPACE, name)


class LedgerDailyTotal(Base):
    """The summed calls, tokens and cost of one day's purged ledger rows of one key."""

    __tablename__ = "ledger_daily_totals"
    __table_args__ = (Index("ix_ledger_daily_totals_account_id_day", "account_id", "day"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    day: Mapped[date] = mapped_column(Date, index=True, nullable=False)
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
    # Summed latency of the calls (0 for totals folded before it was kept).
    duration_ms: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default=text("0"), nullable=False
    )
