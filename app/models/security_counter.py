"""The security capability's counters on the database, for deployments without Redis: one row
per counter (a failed-login count, a throttling, a known context), shared by every API process.

A row is alive until ``expires_at`` (seconds since the epoch): an increment of an expired row
starts it again from zero with a new expiry, in one upsert (``INSERT ... ON CONFLICT (key) DO
UPDATE ... RETURNING``) on SQLite and PostgreSQL alike; expired rows are deleted in the
background."""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class SecurityCounter(Base):
    __tablename__ = "security_counters"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[float] = mapped_column(Float, index=True, nullable=False)
