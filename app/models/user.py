"""Users and their roles."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, IdMixin, TimestampMixin, UTCDateTime


class Role(StrEnum):
    """``admin`` runs the platform; ``owner``, ``member`` and ``viewer`` act inside an account."""

    viewer = "viewer"
    member = "member"
    owner = "owner"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANKS = {Role.viewer: 0, Role.member: 1, Role.owner: 2, Role.admin: 3}


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True, nullable=False
    )
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    full_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), index=True, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Moves on when the password changes or the user is deactivated. Every JWT carries the
    # generation it was issued in; one of an older generation is refused, so those events end
    # the user's access tokens as well as their refresh tokens. Read with the user on every
    # authenticated request, so checking it costs nothing extra.
    token_generation: Mapped[int] = mapped_column(
        Integer, default=0, server_default=text("0"), nullable=False
    )

    @property
    def role_enum(self) -> Role:
        return Role(self.role)
