"""Accounts: created by platform admins together with their first owner."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, NotFound
from app.models import Account, Role, User
from app.repositories.accounts import AccountRepository
from app.repositories.base import commit_unique
from app.repositories.users import UserRepository
from app.schemas.accounts import AccountCreate
from app.services.audit import AuditTrail
from app.services.passwords import hash_outside_transaction
from app.services.principal import Principal


def name_key(name: str) -> str:
    """Account names are unique regardless of case and inner spacing."""
    return " ".join(name.split()).casefold()


class AccountService:
    def __init__(self, session: AsyncSession, audit: AuditTrail | None = None) -> None:
        self.session = session
        self.accounts = AccountRepository(session)
        self.audit = audit or AuditTrail.disabled()
        self.users = UserRepository(session)

    async def create(self, principal: Principal, data: AccountCreate) -> Account:
        principal.require(Role.admin)
        password_hash = await hash_outside_transaction(self.session, data.owner_password)
        key = name_key(data.name)
        if await self.accounts.by_name_key(key) is not None:
            raise Conflict(f"An account named {data.name!r} already exists.")
        if await self.users.by_email(data.owner_email) is not None:
            raise Conflict("A user with this email already exists.")
        account = Account(name=data.name, name_key=key)
        self.accounts.add(account)
        await self.session.flush()
        self.users.add(
            User(
                account_id=account.id,
                email=data.owner_email.lower(),
                full_name=data.owner_name,
                password_hash=password_hash,
                role=Role.owner.value,
            )
        )
        await commit_unique(self.session, "The account or its owner already exists.")
        await self.audit.record(
            "account.create",
            principal=principal,
            account_id=account.id,
            target=f"account:{account.id}",
            details={"name": account.name, "owner_email": data.owner_email.lower()},
        )
        return account

    async def page(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[Sequence[Account], int]:
        principal.require(Role.admin)
        return await self.accounts.page(limit=limit, offset=offset)

    async def get(self, principal: Principal, account_id: uuid.UUID) -> Account:
        if not principal.is_admin and account_id != principal.account_id:
            raise NotFound("No account with this id.")
        account = await self.accounts.get(account_id)
        if account is None:
            raise NotFound("No account with this id.")
        return account
