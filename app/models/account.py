"""Accounts: the tenants. Every piece of account data belongs to exactly one."""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, IdMixin, TimestampMixin


class Account(IdMixin, TimestampMixin, Base):
    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(120), nullable=False)
    # Case folding can triple a name's length ("ﬃ" -> "ffi"), so the key is wider.
    name_key: Mapped[str] = mapped_column(String(360), nullable=False, unique=True)
    is_platform: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # Executions pending or running; bumped with a guarded UPDATE so that several API
    # processes agree on the per-account concurrency limit.
    active_executions: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
