"""Credentials: password hashing (argon2id), JWTs, and API keys.

Hashing and verifying a password costs about 100 ms of CPU and 64 MiB: request handlers use
``hash_password_async`` / ``verify_password_async``, which run it in a small thread pool of
its own (argon2 releases the GIL), never on the event loop, and never while they hold a
database transaction open.

JWTs are HS256, signed with the settings' secret key, and carry ``sub``, ``aud``, ``iss``,
``iat``, ``exp``, ``jti`` and ``typ`` (``access`` or ``refresh``); decoding requires all of
them and accepts only HS256, so ``alg: none``, expired, wrong-audience, wrong-type and tampered
tokens are refused. They also carry ``gen``, the user's token generation when they were issued
(absent, in tokens older than the claim, it reads as 0): a password change moves the user to
the next generation, which ends every token issued before it. API keys are ``rk_`` plus 256
random bits; only their SHA-256 is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.core.config import PasswordHashSettings, Settings

JWT_ALGORITHM = "HS256"
API_KEY_PREFIX = "rk_"
TokenType = Literal["access", "refresh"]

_hasher = PasswordHasher()


def configure_password_hashing(cost: PasswordHashSettings) -> None:
    """Make new password hashes (and the timing equaliser's) with this cost; hashes made
    before keep theirs, and verify as they are."""
    global _hasher
    wanted = (cost.time_cost, cost.memory_kib, cost.parallelism)
    if (_hasher.time_cost, _hasher.memory_cost, _hasher.parallelism) == wanted:
        return
    _hasher = PasswordHasher(
        time_cost=cost.time_cost, memory_cost=cost.memory_kib, parallelism=cost.parallelism
    )
    _dummy_hash.cache_clear()


@cache
def _dummy_hash() -> str:
    """A real hash to verify against when the user does not exist, so a login's timing does
    not reveal whether the email is registered. Made by ``warm_up_password_checks`` when the
    server starts, not at import: an Argon2 hash would cost every process that imports this
    module (commands, test workers) a tenth of a second."""
    return _hasher.hash("renum-timing-equaliser")


def warm_up_password_checks() -> None:
    """Make the timing equaliser's hash now (in a thread, at start-up), so that no login
    pays for it, and none answers slower for being the first with an unknown email."""
    _dummy_hash()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    try:
        verified = _hasher.verify(password_hash or _dummy_hash(), password)
        return verified and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# At most this many hashes run at once (each takes 64 MiB); more wait their turn.
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
_hash_pool: ThreadPoolExecutor | None = None
_hash_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _hash_pool
    with _hash_pool_lock:
        if _hash_pool is None:
            _hash_pool = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="renum-argon2")
        return _hash_pool


async def hash_password_async(password: str) -> str:
    """``hash_password`` in the hashing threads: the event loop keeps serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), hash_password, password)


async def verify_password_async(password: str, password_hash: str | None) -> bool:
    """``verify_password`` in the hashing threads: the event loop keeps serving meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), verify_password, password, password_hash)


class TokenError(Exception):
    """The token is not one this server issued for this use, or no longer valid."""


class TokenExpired(TokenError):
    """A token this server issued, past its expiry."""


@dataclass(frozen=True)
class TokenClaims:
    subject: uuid.UUID
    token_id: uuid.UUID
    token_type: TokenType
    issued_at: datetime
    expires_at: datetime
    generation: int = 0


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
        generation: int = 0,
    ) -> tuple[str, TokenClaims]:
        issued = (now or datetime.now(UTC)).replace(microsecond=0)
        claims = TokenClaims(
            subject=subject,
            token_id=token_id or uuid.uuid4(),
            token_type=token_type,
            issued_at=issued,
            expires_at=issued + self._lifetimes[token_type],
            generation=generation,
        )
        payload = {
            "sub": str(claims.subject),
            "jti": str(claims.token_id),
            "typ": token_type,
            "aud": self._audience,
            "iss": self._issuer,
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "gen": generation,
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
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired(str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        if payload.get("typ") != expected_type:
            raise TokenError(f"expected a {expected_type} token")
        generation = payload.get("gen", 0)
        if type(generation) is not int or generation < 0:
            raise TokenError("malformed claims")
        try:
            return TokenClaims(
                subject=uuid.UUID(str(payload["sub"])),
                token_id=uuid.UUID(str(payload["jti"])),
                token_type=expected_type,
                issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
                expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
                generation=generation,
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
