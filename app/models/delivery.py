"""Outbound deliveries and the tenant webhooks that produce most of them.

A ``Delivery`` is one signed JSON POST to send (the outbox, in the database so that every
process agrees on it and none is lost when a process dies): where to, what, which secret
signs it (a webhook's, a sealed secret of its own, or none), how the attempts went, and
whether it is still pending, delivered or dead (out of attempts). A ``Webhook`` is an
endpoint an account registered for its executions' events; its secret is stored sealed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, IdMixin, TimestampMixin, UTCDateTime


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for its next attempt (or being attempted now)
    delivered = "delivered"  # the destination answered 2xx
    dead = "dead"  # out of attempts, or refused for good: a dead letter


class Webhook(IdMixin, TimestampMixin, Base):
    __tablename__ = "webhooks"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True, nullable=False
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str | None] = mapped_column(String(200))
    events: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    sealed_secret: Mapped[str] = mapped_column(Text, nullable=False)
    encryption_key_id: Mapped[str] = mapped_column(String(64), index=True, nullable=False)


class Delivery(IdMixin, TimestampMixin, Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        # The dispatcher's claim: due pending deliveries, oldest due first.
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # A webhook's delivery log, newest first.
        Index("ix_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
        # Dead letters per owner (the bound); an account's deliveries (its deletion).
        Index("ix_deliveries_account_id_status_finished_at", "account_id", "status", "finished_at"),
        # An alert channel's latest delivery (its state on the dashboard).
        Index("ix_deliveries_kind_updated_at", "kind", "updated_at"),
    )

    # The owner: an account, or None for the platform's own deliveries (alerts, reports).
    account_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE")
    )
    webhook_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(32), nullable=False)  # "webhook", "alert", ...
    event: Mapped[str] = mapped_column(String(64), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # Sent through the egress guard (tenant destinations); only operator-configured ones not.
    guarded: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # A secret of its own (sealed, bound to this row); a webhook's delivery uses the webhook's.
    sealed_secret: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
