"""User management: owners manage their account's users; admins manage every account's;
every user changes their own password.

Passwords are hashed and verified with no transaction open (``app.services.passwords``). A
password change, by the user or by an owner or admin, and a deactivation end the user's
sessions: their refresh tokens are revoked and their token generation moves on, which ends
their access tokens too. API keys are credentials of their own and stay valid."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.core.security import hash_password_async
from app.db.base import utcnow
from app.models import Role, User
from app.repositories.accounts import AccountRepository
from app.repositories.base import commit_unique
from app.repositories.tokens import RefreshTokenRepository
from app.repositories.users import UserRepository
from app.schemas.users import PasswordChange, UserCreate, UserUpdate
from app.services.audit import AuditTrail, Detail
from app.services.passwords import hash_outside_transaction, verify_outside_transaction
from app.services.principal import Principal


class UserService:
    def __init__(self, session: AsyncSession, audit: AuditTrail | None = None) -> None:
        self.session = session
        self.audit = audit or AuditTrail.disabled()
        self.users = UserRepository(session)
        self.accounts = AccountRepository(session)
        self.refresh_tokens = RefreshTokenRepository(session)

    async def me(self, principal: Principal) -> User:
        user = await self.users.get(principal.user_id)
        if user is None:  # pragma: no cover - authentication already loaded this user
            raise NotFound("No user with this id.")
        return user

    async def page(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[Sequence[User], int]:
        principal.require(Role.owner)
        return await self.users.page(principal.scope, limit=limit, offset=offset)

    async def get(self, principal: Principal, user_id: uuid.UUID) -> User:
        principal.require(Role.owner)
        user = await self.users.get(user_id, principal.scope)
        if user is None:
            raise NotFound("No user with this id.")
        return user

    async def create(self, principal: Principal, data: UserCreate) -> User:
        principal.require(Role.owner)
        password_hash = await hash_outside_transaction(self.session, data.password)
        if principal.is_admin and data.account_id is None:
            raise ValidationFailed.at(
                "/body/account_id", "Admins must say which account the user belongs to.", "missing"
            )
        account_id = data.account_id or principal.account_id
        if account_id != principal.account_id and (
            not principal.is_admin or await self.accounts.get(account_id) is None
        ):
            raise NotFound("No account with this id.")
        if await self.users.by_email(data.email) is not None:
            raise Conflict("A user with this email already exists.")
        user = User(
            account_id=account_id,
            email=data.email.lower(),
            full_name=data.full_name,
            password_hash=password_hash,
            role=data.role,
        )
        self.users.add(user)
        await commit_unique(self.session, "A user with this email already exists.")
        await self.audit.record(
            "user.create",
            principal=principal,
            account_id=account_id,
            target=f"user:{user.id}",
            details={"email": user.email, "role": user.role},
        )
        return user

    async def update(self, principal: Principal, user_id: uuid.UUID, data: UserUpdate) -> User:
        changes = data.model_dump(exclude_unset=True)
        new_hash = None
        if changes.get("password"):
            principal.require(Role.owner)
            new_hash = await hash_outside_transaction(self.session, changes["password"])
        user = await self.get(principal, user_id)
        if user.id == principal.user_id and ({"role", "is_active"} & changes.keys()):
            raise Conflict("You cannot change your own role or deactivate yourself.")
        if user.role_enum is Role.admin and "role" in changes:
            raise Conflict("Admin users are managed with `renum users create-admin`.")
        if "full_name" in changes:
            user.full_name = changes["full_name"]
        before: dict[str, Detail] = {"role": user.role, "is_active": user.is_active}
        for field in ("role", "is_active"):
            if changes.get(field) is not None:
                setattr(user, field, changes[field])
        if new_hash is not None:
            user.password_hash = new_hash
        if new_hash is not None or changes.get("is_active") is False:
            # Ends the user's access tokens. The database does the increment: a read-then-write
            # here could lose a concurrent change's increment and revive that change's tokens.
            await self.users.advance_token_generation(user.id)
            await self.refresh_tokens.revoke_user(user.id, utcnow())
        await self.session.commit()
        facts: dict[str, Detail] = {}
        for field, was in before.items():
            if getattr(user, field) != was:
                facts[f"{field}_from"], facts[field] = was, getattr(user, field)
        if new_hash is not None:
            facts["password_changed"] = True
        if facts:
            await self.audit.record(
                "user.update",
                principal=principal,
                account_id=user.account_id,
                target=f"user:{user.id}",
                details=facts,
            )
        return user

    async def change_own_password(self, principal: Principal, data: PasswordChange) -> None:
        """The caller's new password, given the current one; ends every session of theirs
        (this one too). API keys stay valid."""
        if principal.api_key_id is not None:
            raise Forbidden(
                "Change your password with an access token from logging in, not an API key."
            )
        user = await self.me(principal)
        user_id, stored = user.id, user.password_hash
        if not await verify_outside_transaction(self.session, data.current_password, stored):
            await self.session.rollback()
            await self.audit.record(
                "user.password_change",
                outcome="failure",
                principal=principal,
                target=f"user:{user_id}",
                details={"reason": "wrong_current_password"},
            )
            raise ValidationFailed.at(
                "/body/current_password", "The current password is not correct.", "wrong_password"
            )
        if data.new_password == data.current_password:
            raise ValidationFailed.at(
                "/body/new_password",
                "The new password must differ from the current one.",
                "unchanged_password",
            )
        new_hash = await hash_password_async(data.new_password)
        if not await self.users.change_password(user_id, new_hash, expected_hash=stored):
            await self.session.rollback()
            raise Conflict("The password was changed meanwhile; log in with the new one.")
        await self.refresh_tokens.revoke_user(user_id, utcnow())
        await self.session.commit()
        await self.audit.record(
            "user.password_change", principal=principal, target=f"user:{user_id}"
        )

    async def delete(self, principal: Principal, user_id: uuid.UUID) -> None:
        user = await self.get(principal, user_id)
        if user.id == principal.user_id:
            raise Conflict("You cannot delete yourself.")
        target, account_id, email = f"user:{user.id}", user.account_id, user.email
        await self.users.delete(user)
        await self.session.commit()
        await self.audit.record(
            "user.delete",
            principal=principal,
            account_id=account_id,
            target=target,
            details={"email": email},
        )
