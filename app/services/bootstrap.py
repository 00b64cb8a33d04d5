"""First start: on an empty database, create the platform account and its admin."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Environment, Settings
from app.core.security import hash_password_async
from app.db.base import utcnow
from app.models import Account, Role, User
from app.repositories.accounts import AccountRepository
from app.repositories.tokens import RefreshTokenRepository
from app.repositories.users import UserRepository
from app.services.accounts import name_key

PLATFORM_ACCOUNT_NAME = "Platform"
DEFAULT_ADMIN_EMAIL = "admin@renum.local"


@dataclass(frozen=True)
class BootstrapResult:
    email: str
    generated_password: str | None
    created: bool = True  # False: no admin yet, and this environment does not make one


async def platform_account(session: AsyncSession) -> Account:
    accounts = AccountRepository(session)
    account = await accounts.platform()
    if account is None:
        account = Account(
            name=PLATFORM_ACCOUNT_NAME, name_key=name_key(PLATFORM_ACCOUNT_NAME), is_platform=True
        )
        accounts.add(account)
        await session.flush()
    return account


async def create_admin(session: AsyncSession, email: str, password: str) -> User:
    password_hash = await hash_password_async(password)
    account = await platform_account(session)
    user = User(
        account_id=account.id,
        email=email.lower(),
        password_hash=password_hash,
        role=Role.admin.value,
        full_name="Administrator",
    )
    UserRepository(session).add(user)
    await session.commit()
    return user


async def reset_password(session: AsyncSession, email: str, password: str) -> bool:
    """Give the user with ``email`` a new password and end every session of theirs (access
    and refresh tokens; API keys stay valid); whether such a user exists. For an operator who
    lost an admin's password (``renum users reset-password``)."""
    password_hash = await hash_password_async(password)
    users = UserRepository(session)
    user = await users.by_email(email)
    if user is None:
        return False
    await users.change_password(user.id, password_hash)
    await RefreshTokenRepository(session).revoke_user(user.id, utcnow())
    await session.commit()
    return True


class BootstrapPasswordLeft(RuntimeError):
    """Staging or production still carries the bootstrap password once the first admin exists."""


async def bootstrap_admin(session: AsyncSession, settings: Settings) -> BootstrapResult | None:
    """Create the first admin if the database has no users; return what was created.

    Staging and production never generate a password (it would be printed to a log): without
    ``RENUM_BOOTSTRAP_ADMIN_PASSWORD`` they create nobody (use ``renum users create-admin``),
    and once an admin exists they refuse to run with that password still set."""
    configured = settings.bootstrap_admin_password
    strict = settings.environment in (Environment.staging, Environment.production)
    if await UserRepository(session).count() > 0:
        if strict and configured is not None:
            raise BootstrapPasswordLeft(
                f"RENUM_BOOTSTRAP_ADMIN_PASSWORD is still set in {settings.environment.value} "
                "although the first admin exists: remove it from the environment (the admin "
                "changes passwords with POST /api/v1/users/me/password)"
            )
        return None
    email = settings.bootstrap_admin_email or DEFAULT_ADMIN_EMAIL
    if strict and configured is None:
        return BootstrapResult(email=email, generated_password=None, created=False)
    password = configured.get_secret_value() if configured else secrets.token_urlsafe(18)
    await create_admin(session, email, password)
    return BootstrapResult(email=email, generated_password=None if configured else password)
