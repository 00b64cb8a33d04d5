"""Logging in, refreshing and revoking sessions, and turning a credential into a Principal.

A login reads the user in a read-only transaction, ends it, verifies the password in the
hashing threads, then records the session in a new short transaction: no lock is held while
argon2 runs. An access or refresh token is accepted only while its ``gen`` claim equals the
user's current token generation (read with the user, so the check costs nothing extra); a
password change or a deactivation moves the generation on and so ends every token issued
before. A login whose user moved on while the password was being verified is refused, and a
refresh token is rotated by a conditional update, so that of two requests racing to rotate or
revoke the same token only one succeeds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import CredentialEnded, Unauthorized
from app.core.security import (
    TokenClaims,
    TokenCodec,
    TokenError,
    TokenExpired,
    hash_api_key,
    looks_like_api_key,
)
from app.db.database import READ_ONLY
from app.models import RefreshToken, Role, User
from app.repositories.tokens import ApiKeyRepository, RefreshTokenRepository
from app.repositories.users import UserRepository
from app.schemas.auth import TokenPair
from app.services.audit import AuditTrail, Outcome
from app.services.passwords import verify_outside_transaction
from app.services.principal import Principal

# Writing last_used_at on every request would turn reads into writes; once a minute is enough.
API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)

SESSION_ENDED = (
    "This session has ended (the password changed or the user was deactivated); log in again."
)


class LoginGuard(Protocol):
    """Throttles logins (the security capability's): ``before`` raises 429 while logins to
    ``email`` from this client are throttled; ``after`` is told how the login went (None:
    it succeeded; else why it failed)."""

    async def before(self, email: str) -> None: ...

    async def after(self, email: str, failure: str | None) -> None: ...


class AuthService:
    def __init__(
        self,
        session: AsyncSession,
        codec: TokenCodec,
        audit: AuditTrail | None = None,
        guard: LoginGuard | None = None,
    ) -> None:
        self.session = session
        self.codec = codec
        self.audit = audit or AuditTrail.disabled()
        self.guard = guard
        self.users = UserRepository(session)
        self.refresh_tokens = RefreshTokenRepository(session)
        self.api_keys = ApiKeyRepository(session)

    async def login(self, email: str, password: str) -> TokenPair:
        """A token pair for the user's email and password; every attempt is audited
        (``auth.login``, a success or a failure with its reason) and told to the guard."""
        if self.guard is not None:
            await self.guard.before(email)
        if not self.session.in_transaction():
            await self.session.connection(execution_options=READ_ONLY)
        user = await self.users.by_email(email)
        password_hash = user.password_hash if user else None
        found = (user.id, user.account_id, user.is_active, user.token_generation) if user else None
        verified = await verify_outside_transaction(self.session, password, password_hash)
        if not verified or found is None:
            await self._login_failed(email, found, "unknown_user" if found is None else "password")
            raise Unauthorized("Incorrect email or password.")
        user_id, account_id, is_active, generation = found
        if not is_active:
            await self._login_failed(email, found, "deactivated")
            raise Unauthorized("This user is deactivated.")
        # The password was verified against what was read before, with no transaction open: a
        # password change or a deactivation may have landed meanwhile. The login stands only if
        # the user is still at the generation read (a conditional update, which also keeps
        # any change out until this transaction ends), and its tokens carry that generation.
        if not await self.users.record_login(user_id, datetime.now(UTC), generation=generation):
            await self.session.rollback()
            await self._login_failed(email, found, "changed_meanwhile")
            raise Unauthorized("Incorrect email or password.")
        pair = self._issue_pair(user_id, generation, family_id=uuid.uuid4())
        await self.session.commit()
        await self.audit.record(
            "auth.login", actor_kind="user", actor_id=user_id, account_id=account_id, target=email
        )
        if self.guard is not None:
            await self.guard.after(email, None)
        return pair

    async def _login_failed(
        self, email: str, found: tuple[uuid.UUID, uuid.UUID, bool, int] | None, reason: str
    ) -> None:
        await self.session.rollback()  # nothing is held while the entry is written
        await self.audit.record(
            "auth.login",
            outcome="failure",
            actor_kind="anonymous",
            account_id=None if found is None else found[1],
            target=email,
            details={"reason": reason, "user_id": None if found is None else str(found[0])},
        )
        if self.guard is not None:
            await self.guard.after(email, reason)

    async def refresh(self, refresh_token: str) -> TokenPair:
        row, claims = await self._stored_refresh_token(refresh_token)
        now = datetime.now(UTC)
        if row.revoked_at is not None:
            # A revoked token presented again: it was stolen or replayed. End the whole session.
            await self._end_session(row.family_id, now)
            await self._audit_session(row.user_id, "auth.refresh", "failure", "replayed")
            raise Unauthorized("This refresh token has been revoked.")
        user = await self.users.get(row.user_id)
        if user is None or not user.is_active:
            raise Unauthorized("This user is deactivated.")
        if claims.generation != user.token_generation:
            # Issued before a password change or a deactivation (say, by a login that verified
            # the old password while the change landed): the session ended with that change.
            await self._end_session(row.family_id, now)
            raise Unauthorized(SESSION_ENDED)
        if not await self.refresh_tokens.revoke(row.id, now):
            # Rotated or revoked by a concurrent request since it was read: a replay.
            await self._end_session(row.family_id, now)
            await self._audit_session(row.user_id, "auth.refresh", "failure", "replayed")
            raise Unauthorized("This refresh token has been revoked.")
        # The new pair keeps the token's generation (the one just checked), never a newer one
        # read later: a change landing before this commit still ends the new pair.
        pair = self._issue_pair(user.id, claims.generation, family_id=row.family_id)
        await self.session.commit()
        return pair

    async def logout(self, refresh_token: str) -> None:
        row, _ = await self._stored_refresh_token(refresh_token)
        await self.refresh_tokens.revoke_family(row.family_id, datetime.now(UTC))
        await self.session.commit()
        await self._audit_session(row.user_id, "auth.logout", "success")

    async def _audit_session(
        self, user_id: uuid.UUID, action: str, outcome: Outcome, reason: str | None = None
    ) -> None:
        """Record what happened to a user's session, in their account (read first; the
        session's transaction ends before the entry is written)."""
        if not self.audit.enabled:
            return
        user = await self.users.get(user_id)
        account_id, email = (user.account_id, user.email) if user else (None, None)
        await self.session.rollback()
        await self.audit.record(
            action,
            outcome=outcome,
            actor_kind="user",
            actor_id=user_id,
            account_id=account_id,
            target=email,
            details={"reason": reason} if reason else None,
        )

    async def authenticate(self, credential: str) -> Principal:
        if looks_like_api_key(credential):
            return await self._authenticate_api_key(credential)
        try:
            claims = self.codec.decode(credential, "access")
        except TokenExpired as exc:
            raise CredentialEnded("The access token is invalid or expired.") from exc
        except TokenError as exc:
            raise Unauthorized("The access token is invalid or expired.") from exc
        user = await self._active_user(claims.subject)
        if claims.generation != user.token_generation:
            raise CredentialEnded(SESSION_ENDED)
        return Principal(user_id=user.id, account_id=user.account_id, role=user.role_enum)

    async def _authenticate_api_key(self, key: str) -> Principal:
        api_key = await self.api_keys.by_hash(hash_api_key(key))
        now = datetime.now(UTC)
        if api_key is None:
            raise Unauthorized("The API key is invalid or revoked.")
        if api_key.revoked_at is not None:
            raise CredentialEnded("The API key is invalid or revoked.")
        if api_key.expires_at is not None and api_key.expires_at <= now:
            raise CredentialEnded("The API key has expired.")
        user = await self._active_user(api_key.user_id)
        if api_key.last_used_at is None or now - api_key.last_used_at > API_KEY_TOUCH_INTERVAL:
            api_key.last_used_at = now
            await self.session.commit()
        # A key never carries more than its creator currently has.
        role = min(Role(api_key.role), user.role_enum, key=lambda r: r.rank)
        return Principal(
            user_id=user.id, account_id=user.account_id, role=role, api_key_id=api_key.id
        )

    async def _active_user(self, user_id: uuid.UUID) -> User:
        user = await self.users.get(user_id)
        if user is None or not user.is_active:
            raise Unauthorized("The user of this credential no longer exists or is deactivated.")
        return user

    async def _stored_refresh_token(self, token: str) -> tuple[RefreshToken, TokenClaims]:
        try:
            claims = self.codec.decode(token, "refresh")
        except TokenError as exc:
            raise Unauthorized("The refresh token is invalid or expired.") from exc
        row = await self.refresh_tokens.get(claims.token_id)
        if row is None or row.user_id != claims.subject:
            raise Unauthorized("The refresh token is not known.")
        return row, claims

    async def _end_session(self, family_id: uuid.UUID, when: datetime) -> None:
        """Revoke every refresh token of the session (the token family) and commit."""
        await self.refresh_tokens.revoke_family(family_id, when)
        await self.session.commit()

    def _issue_pair(
        self, user_id: uuid.UUID, generation: int, *, family_id: uuid.UUID
    ) -> TokenPair:
        access, _ = self.codec.issue(user_id, "access", generation=generation)
        refresh, claims = self.codec.issue(user_id, "refresh", generation=generation)
        self.refresh_tokens.add(
            RefreshToken(
                id=claims.token_id,
                user_id=user_id,
                family_id=family_id,
                created_at=claims.issued_at,
                expires_at=claims.expires_at,
            )
        )
        return TokenPair(
            access_token=access,
            refresh_token=refresh,
            expires_in=int(self.codec.lifetime("access").total_seconds()),
        )
