"""The audit trail: security-relevant actions, append-only and hash-chained.

An ``AuditEntry`` is one action (who, in which account, did what to what, from where, in which
request, with which outcome). Entries are numbered by ``seq`` without gaps, and each one's
``hash`` covers its fields and the previous entry's hash, so changing, removing or reordering
an entry breaks the chain. ``AuditHead`` (one row) names the newest entry and the newest
checkpoint with a signature (HMAC under the audit signing key), so removing the newest entries
or checkpoints shows too; an ``AuditCheckpoint`` is a signed copy of the head at some point,
naming the checkpoint before it. Retention prunes old entries only up to a checkpoint, whose
entry is kept: verification starts there.

No foreign keys: the trail outlives the users and accounts it names, and nothing deleted
elsewhere may change it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime

# An integer primary key that is a 64-bit BIGINT on PostgreSQL and SQLite's rowid alias.
SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_created_at_id", "created_at", "id"),
        Index("ix_audit_entries_account_id_created_at_id", "account_id", "created_at", "id"),
    )

    seq: Mapped[int] = mapped_column(SEQUENCE, primary_key=True, autoincrement=False)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    account_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(400))
    source: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditHead(Base):
    """The newest entry of the trail (``seq`` 0 and the genesis hash while it is empty) and the
    newest checkpoint (``checkpoint_seq``, 0 for none), signed."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(SEQUENCE, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    checkpoint_seq: Mapped[int] = mapped_column(SEQUENCE, nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed copy of the head at ``seq``, naming the checkpoint before it (``prev_seq``, 0
    for none): written periodically; the oldest kept marks where pruning stopped."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(SEQUENCE, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    prev_seq: Mapped[int] = mapped_column(SEQUENCE, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    signature: Mapped[str] = mapped_column(String(64), nullable=False)
