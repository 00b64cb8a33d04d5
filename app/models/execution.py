"""Executions and everything they record: steps, shared context, messages between agents,
events, and the ledger.

The database is the execution's source of truth: the engine decides each move from committed
rows, so any process can resume an execution after a crash.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, IdMixin, TimestampMixin, UTCDateTime, utcnow

Money = Numeric(18, 8)

# The rows whose content is sealed at rest (``app.services.content``) name the key that sealed
# it in ``content_key_id``; NULL: the content is plaintext. Only sealed rows are indexed (the
# key counts of ``renum keys status``), so rows of accounts that do not seal cost nothing more.
SEALED_ROWS = text("content_key_id IS NOT NULL")


def _content_key_index(table: str) -> Index:
    return Index(
        f"ix_{table}_content_key_id",
        "content_key_id",
        postgresql_where=SEALED_ROWS,
        sqlite_where=SEALED_ROWS,
    )


def _content_key_id() -> Mapped[str | None]:
    return mapped_column(String(64))


# Ended executions and model calls are added into the rollups (``app.models.rollup``) once,
# which ``rolled_up`` records. Only rows not yet rolled up are indexed: the few of running
# executions and of those that just ended.
NOT_ROLLED_UP = text("NOT rolled_up")


def _not_rolled_up_index(table: str) -> Index:
    return Index(
        f"ix_{table}_not_rolled_up",
        "rolled_up",
        postgresql_where=NOT_ROLLED_UP,
        sqlite_where=NOT_ROLLED_UP,
    )


def _rolled_up() -> Mapped[bool]:
    return mapped_column(Boolean, default=False, server_default=text("false"), nullable=False)


class ExecutionStatus(StrEnum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.pending, ExecutionStatus.running)


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"


class Execution(IdMixin, TimestampMixin, Base):
    __tablename__ = "executions"
    # The API's list order within an account: its keyset pages read the index in order.
    __table_args__ = (
        Index("ix_executions_account_id_created_at_id", "account_id", "created_at", "id"),
        _content_key_index("executions"),
        _not_rolled_up_index("executions"),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True, nullable=False
    )
    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), index=True, nullable=False
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    workflow_version: Mapped[int] = mapped_column(Integer, nullable=False)
    workflow: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    status: Mapped[str] = mapped_column(String(16), index=True, nullable=False)
    status_reason: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    cancel_mode: Mapped[str | None] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(120))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    resumed_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), nullable=False)
    last_event_seq: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # The ownership's generation: every claim and every engine commit advances it, and each
    # checks it first, so a stale owner (or a commit that landed although its connection was
    # lost before the answer) can change nothing.
    lease: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"), nullable=False)
    # The key that sealed its prompt, variables, result and error (None: plaintext).
    content_key_id: Mapped[str | None] = _content_key_id()
    rolled_up: Mapped[bool] = _rolled_up()  # added into the execution rollups (once ended)


class ExecutionStep(IdMixin, Base):
    __tablename__ = "execution_steps"
    __table_args__ = (
        UniqueConstraint("execution_id", "step_key"),
        _content_key_index("execution_steps"),
    )

    execution_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True, nullable=False
    )
    step_key: Mapped[str] = mapped_column(String(64), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    input: Mapped[str | None] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The key that sealed its input, output and error (None: plaintext).
    content_key_id: Mapped[str | None] = _content_key_id()


class ContextEntry(IdMixin, Base):
    """One version of one key of an execution's shared context, with its provenance."""

    __tablename__ = "execution_context"
    __table_args__ = (
        UniqueConstraint("execution_id", "key", "version"),
        _content_key_index("execution_context"),
    )

    execution_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True, nullable=False
    )
    key: Mapped[str] = mapped_column(String(200), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    step_key: Mapped[str | None] = mapped_column(String(64))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    content_key_id: Mapped[str | None] = _content_key_id()  # sealed its value (None: plaintext)


class MessageKind(StrEnum):
    direct = "direct"
    broadcast = "broadcast"
    request = "request"
    response = "response"


class MessageStatus(StrEnum):
    delivered = "delivered"  # direct, broadcast and in-time responses
    pending = "pending"  # a request waiting for its response
    answered = "answered"  # a request that got its response in time
    timed_out = "timed_out"  # a request whose deadline passed (or whose execution ended) first
    late = "late"  # a response that arrived after its request timed out


class ExecutionMessage(IdMixin, Base):
    """One message from one agent to another (``recipient_agent_id``) or to every other agent
    of the execution (a broadcast). A request and its response share a correlation id."""

    __tablename__ = "execution_messages"
    __table_args__ = (
        UniqueConstraint("execution_id", "seq"),
        _content_key_index("execution_messages"),
    )

    execution_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True, nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    sender_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    sender_step: Mapped[str] = mapped_column(String(64), nullable=False)
    recipient_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    correlation_id: Mapped[str | None] = mapped_column(String(36), index=True)
    body: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    content_key_id: Mapped[str | None] = _content_key_id()  # sealed its body (None: plaintext)


class ExecutionEvent(IdMixin, Base):
    __tablename__ = "execution_events"
    __table_args__ = (
        UniqueConstraint("execution_id", "seq"),
        _content_key_index("execution_events"),
    )

    execution_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True, nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(40), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # The key that sealed the content fields of its data (None: plaintext).
    content_key_id: Mapped[str | None] = _content_key_id()


class LedgerEntry(IdMixin, Base):
    """One model call: who, which model, how many tokens, what it cost, whose key paid."""

    __tablename__ = "ledger_entries"
    __table_args__ = (_not_rolled_up_index("ledger_entries"),)

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True, nullable=False
    )
    # The ledger outlives what it accounts for: deleting a team (and so its executions)
    # keeps its spending on record.
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("executions.id", ondelete="SET NULL"), index=True
    )
    step_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("execution_steps.id", ondelete="SET NULL"), index=True
    )
    team_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    agent_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), index=True, nullable=False)
    input_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Money, nullable=False)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    paid_by: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, index=True, nullable=False
    )
    rolled_up: Mapped[bool] = _rolled_up()  # added into the usage rollups (once its run ended)
