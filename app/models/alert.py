"""Alerts and silences: the monitor's alert state, kept in the database so that every API
process agrees on it (one evaluator per deployment writes it; any process reads it).

An ``AlertRecord`` is one alert, identified by its fingerprint (the rule and the labels of
what breaks it): its state (pending, firing, resolved), when it started, fired, was resolved
and last notified, the value that triggered it and a message with diagnostics. An
``AlertSilence`` keeps the alerts its matchers select from being notified until it expires;
``AlertEvaluation`` records when the rules were last evaluated, and by which process.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, IdMixin, TimestampMixin, UTCDateTime


class AlertRecord(TimestampMixin, Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_state_updated_at", "state", "updated_at"),)

    fingerprint: Mapped[str] = mapped_column(String(32), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    diagnostics: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AlertSilence(IdMixin, TimestampMixin, Base):
    __tablename__ = "alert_silences"
    __table_args__ = (Index("ix_alert_silences_expires_at", "expires_at"),)

    matchers: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    reason: Mapped[str] = mapped_column(String(500), nullable=False)
    author: Mapped[str] = mapped_column(String(320), nullable=False)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # ended early by an admin


class AlertEvaluation(Base):
    """The evaluator's heartbeat: one row per kind of evaluation (``rules``), updated by each
    evaluation, so that every process can tell when the rules were last evaluated, and where."""

    __tablename__ = "alert_evaluations"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    by: Mapped[str] = mapped_column(String(300), nullable=False)
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
