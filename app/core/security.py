"""Credentials: password hashing (argon2id), JWTs, and API keys.

JWTs are HS256, signed with the settings' secret key, and carry ``sub``, ``aud``, ``iss``,
``iat``, ``exp``, ``jti`` and ``typ`` (``access`` or ``refresh``); decoding requires all of
them and accepts only HS256, so ``alg: none``, expired, wrong-audience, wrong-type and tampered
tokens are refused. API keys are ``rk_`` plus 256 random bits; only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.core.config import Settings

JWT_ALGORITHM = "HS256"
API_KEY_PREFIX = "rk_"
TokenType = Literal["access", "refresh"]

_hasher = PasswordHasher()
# A real hash to verify against when the user does not exist, so a login's timing does not
# reveal whether the email is registered.
_DUMMY_HASH = _hasher.hash("renum-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class TokenError(Exception):
    """The token is not one this server issued for this use, or no longer valid."""


@dataclass(frozen=True)
class TokenClaims:
    subject: uuid.UUID
    token_id: uuid.UUID
    token_type: TokenType
    issued_at: datetime
    expires_at: datetime


class TokenCodec:
    """Issues and checks the JWTs of one settings object."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.secret_key.get_secret_value()
        self._audience = settings.auth.audience
        self._issuer = settings.auth.issuer
        self._lifetimes: dict[str, timedelta] = {
            "access": timedelta(minutes=settings.auth.access_token_minutes),
            "refresh": timedelta(days=settings.auth.refresh_token_days),
        }

    def lifetime(self, token_type: TokenType) -> timedelta:
        return self._lifetimes[token_type]

    def issue(
        self,
        subject: uuid.UUID,
        token_type: TokenType,
        *,
        token_id: uuid.UUID | None = None,
        now: datetime | None = None,
    ) -> tuple[str, TokenClaims]:
        issued = (now or datetime.now(UTC)).replace(microsecond=0)
        claims = TokenClaims(
            subject=subject,
            token_id=token_id or uuid.uuid4(),
            token_type=token_type,
            issued_at=issued,
            expires_at=issued + self._lifetimes[token_type],
        )
        payload = {
            "sub": str(claims.subject),
            "jti": str(claims.token_id),
            "typ": token_type,
            "aud": self._audience,
            "iss": self._issuer,
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        }
        return jwt.encode(payload, self._key, algorithm=JWT_ALGORITHM), claims

    def decode(self, token: str, expected_type: TokenType) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[JWT_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss", "jti", "typ"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        if payload.get("typ") != expected_type:
            raise TokenError(f"expected a {expected_type} token")
        try:
            return TokenClaims(
                subject=uuid.UUID(str(payload["sub"])),
                token_id=uuid.UUID(str(payload["jti"])),
                token_type=expected_type,
                issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
                expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            )
        except (ValueError, TypeError) as exc:
            raise TokenError("malformed claims") from exc


def new_api_key() -> str:
    """A fresh API key: ``rk_`` and 43 URL-safe characters (256 random bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(API_KEY_PREFIX)
