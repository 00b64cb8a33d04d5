"""Who is calling: the authenticated user (or API key) and what they may do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.core.errors import Forbidden
from app.models import Role
from app.repositories.base import Scope


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    account_id: uuid.UUID
    role: Role
    api_key_id: uuid.UUID | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin

    @property
    def scope(self) -> Scope:
        """Admins see every account (their reads of other accounts' data are audited);
        everyone else only their own."""
        if self.is_admin:
            return Scope(None, viewer=self.account_id)
        return Scope(self.account_id)

    def require(self, role: Role) -> None:
        if not self.role.at_least(role):
            raise Forbidden(f"This operation needs the {role.value} role or higher.")
