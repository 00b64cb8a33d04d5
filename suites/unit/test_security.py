"""Credentials: argon2 password hashes, the JWT codec's refusals, and API keys."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from app.core.config import Settings
from app.core.security import (
    API_KEY_PREFIX,
    JWT_ALGORITHM,
    TokenCodec,
    TokenError,
    configure_password_hashing,
    hash_api_key,
    hash_password,
    hash_password_async,
    looks_like_api_key,
    new_api_key,
    verify_password,
    verify_password_async,
)

SECRET = "security-unit-test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def fast_password_hashing() -> None:
    """Overrides the unit suite's cheap hasher: this module checks the real one."""


def test_the_real_hasher_has_the_production_cost() -> None:
    hashed = hash_password("checked at full cost")
    assert re.search(r"^\$argon2id\$v=19\$m=65536,t=3,p=4\$", hashed), hashed


def test_the_configured_cost_applies_to_new_hashes_and_old_ones_still_verify() -> None:
    from app.core import security
    from app.core.config import PasswordHashSettings

    before = hash_password("made at the default cost")
    try:
        configure_password_hashing(
            PasswordHashSettings(memory_kib=1024, time_cost=1, parallelism=1)
        )
        cheap = hash_password("made at a low cost")
        assert re.search(r"^\$argon2id\$v=19\$m=1024,t=1,p=1\$", cheap), cheap
        assert verify_password("made at the default cost", before)
        assert verify_password("made at a low cost", cheap)
        # The timing equaliser's hash is made again at the new cost.
        assert "m=1024,t=1,p=1" in security._dummy_hash()
        assert not verify_password("made at a low cost", None)
    finally:
        configure_password_hashing(PasswordHashSettings())
    assert "m=65536,t=3,p=4" in security._dummy_hash()


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(Settings(secret_key=SECRET))


def _segment(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, object]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, object] = {
        "sub": str(uuid.uuid4()),
        "jti": str(uuid.uuid4()),
        "typ": "access",
        "aud": "renum-api",
        "iss": "renum",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


# --- passwords --------------------------------------------------------------------------


def test_password_hash_verifies_only_the_right_password() -> None:
    hashed = hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert verify_password("correct horse battery staple", hashed)
    assert not verify_password("correct horse battery stapl", hashed)
    assert not verify_password("", hashed)


def test_the_same_password_hashes_differently_each_time() -> None:
    assert hash_password("same-password") != hash_password("same-password")


def test_no_hash_never_verifies() -> None:
    # The dummy hash equalises timing for unknown users; it must never let anyone in, even
    # with the dummy's own password.
    assert not verify_password("renum-timing-equaliser", None)
    assert not verify_password("anything", None)


@pytest.mark.parametrize("corrupt", ["", "not-a-hash", "$argon2id$v=19$m=65536,t=3,p=4$broken"])
def test_a_corrupt_hash_is_a_failed_verification_not_an_error(corrupt: str) -> None:
    assert not verify_password("whatever", corrupt)


# --- JWTs -------------------------------------------------------------------------------


@pytest.mark.parametrize("token_type", ["access", "refresh"])
def test_issue_then_decode_round_trips(codec: TokenCodec, token_type: str) -> None:
    subject = uuid.uuid4()
    token, issued = codec.issue(subject, token_type)  # type: ignore[arg-type]
    claims = codec.decode(token, token_type)  # type: ignore[arg-type]
    assert claims == issued
    assert claims.subject == subject
    assert claims.token_type == token_type
    assert claims.expires_at - claims.issued_at == codec.lifetime(token_type)  # type: ignore[arg-type]
    assert claims.issued_at.tzinfo is UTC
    assert claims.issued_at.microsecond == 0


def test_lifetimes_come_from_the_settings() -> None:
    codec = TokenCodec(
        Settings(secret_key=SECRET, auth={"access_token_minutes": 7, "refresh_token_days": 3})
    )
    assert codec.lifetime("access") == timedelta(minutes=7)
    assert codec.lifetime("refresh") == timedelta(days=3)


def test_issue_honours_an_explicit_token_id(codec: TokenCodec) -> None:
    token_id = uuid.uuid4()
    token, claims = codec.issue(uuid.uuid4(), "refresh", token_id=token_id)
    assert claims.token_id == token_id
    assert codec.decode(token, "refresh").token_id == token_id


def test_header_is_hs256_jwt(codec: TokenCodec) -> None:
    token, _ = codec.issue(uuid.uuid4(), "access")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "jti", "typ", "aud", "iss", "iat", "exp", "gen"}


@pytest.mark.parametrize(("issued", "expected"), [("access", "refresh"), ("refresh", "access")])
def test_wrong_token_type_is_refused(codec: TokenCodec, issued: str, expected: str) -> None:
    token, _ = codec.issue(uuid.uuid4(), issued)  # type: ignore[arg-type]
    with pytest.raises(TokenError, match=f"expected a {expected} token"):
        codec.decode(token, expected)  # type: ignore[arg-type]


def test_expired_token_is_refused(codec: TokenCodec) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    token, claims = codec.issue(uuid.uuid4(), "access", now=long_ago)
    assert claims.expires_at < datetime.now(UTC)
    with pytest.raises(TokenError, match="expired"):
        codec.decode(token, "access")


def test_token_just_inside_its_lifetime_is_accepted(codec: TokenCodec) -> None:
    almost = datetime.now(UTC) - codec.lifetime("access") + timedelta(seconds=30)
    token, _ = codec.issue(uuid.uuid4(), "access", now=almost)
    assert codec.decode(token, "access").issued_at == almost.replace(microsecond=0)


@pytest.mark.parametrize(
    ("auth", "message"),
    [({"audience": "someone-else"}, "(?i)audience"), ({"issuer": "evil"}, "(?i)issuer")],
)
def test_token_of_another_audience_or_issuer_is_refused(
    codec: TokenCodec, auth: dict[str, str], message: str
) -> None:
    other = TokenCodec(Settings(secret_key=SECRET, auth=auth))
    token, _ = other.issue(uuid.uuid4(), "access")
    with pytest.raises(TokenError, match=message):
        codec.decode(token, "access")


def test_token_signed_with_another_key_is_refused(codec: TokenCodec) -> None:
    other = TokenCodec(Settings(secret_key="another-secret-key-0123456789abcdef"))
    token, _ = other.issue(uuid.uuid4(), "access")
    with pytest.raises(TokenError, match="Signature verification failed"):
        codec.decode(token, "access")


def test_alg_none_is_refused(codec: TokenCodec) -> None:
    unsigned = f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(_claims())}."
    with pytest.raises(TokenError):
        codec.decode(unsigned, "access")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(codec: TokenCodec, algorithm: str) -> None:
    token = jwt.encode(_claims(), SECRET * 2, algorithm=algorithm)
    with pytest.raises(TokenError, match="alg value is not allowed"):
        codec.decode(token, "access")


def test_tampered_payload_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.issue(uuid.uuid4(), "access")
    header, _payload, signature = token.split(".")
    forged = f"{header}.{_segment(_claims(sub=str(uuid.uuid4())))}.{signature}"
    with pytest.raises(TokenError, match="Signature verification failed"):
        codec.decode(forged, "access")


def test_tampered_signature_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.issue(uuid.uuid4(), "access")
    head, signature = token.rsplit(".", 1)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(TokenError):
        codec.decode(f"{head}.{flipped}", "access")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "rk_notajwt", "eyJ.eyJ.eyJ"])
def test_garbage_is_refused(codec: TokenCodec, garbage: str) -> None:
    with pytest.raises(TokenError):
        codec.decode(garbage, "access")


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "aud", "iss", "jti", "typ"])
def test_every_claim_is_required(codec: TokenCodec, missing: str) -> None:
    claims = _claims()
    del claims[missing]
    token = jwt.encode(claims, SECRET, algorithm=JWT_ALGORITHM)
    with pytest.raises(TokenError):
        codec.decode(token, "access")


@pytest.mark.parametrize(
    "overrides",
    [{"sub": "not-a-uuid"}, {"jti": "42"}, {"sub": ""}],
    ids=["sub", "jti", "empty-sub"],
)
def test_correctly_signed_but_malformed_claims_are_refused(
    codec: TokenCodec, overrides: dict[str, object]
) -> None:
    token = jwt.encode(_claims(**overrides), SECRET, algorithm=JWT_ALGORITHM)
    with pytest.raises(TokenError, match="malformed claims"):
        codec.decode(token, "access")


def test_non_numeric_iat_is_refused(codec: TokenCodec) -> None:
    token = jwt.encode(_claims(iat="yesterday"), SECRET, algorithm=JWT_ALGORITHM)
    with pytest.raises(TokenError):
        codec.decode(token, "access")


# --- API keys ---------------------------------------------------------------------------


def test_new_api_key_has_prefix_and_256_random_bits() -> None:
    key = new_api_key()
    assert key.startswith(API_KEY_PREFIX)
    body = key[len(API_KEY_PREFIX) :]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body)
    # 43 URL-safe characters carry 258 bits; the key holds at least 128 (here 256) bits.
    assert len(base64.urlsafe_b64decode(body + "=")) == 32


def test_new_api_keys_are_unique() -> None:
    keys = {new_api_key() for _ in range(200)}
    assert len(keys) == 200


def test_hash_api_key_is_stable_sha256_hex() -> None:
    key = new_api_key()
    digest = hash_api_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hash_api_key(key)
    assert digest != hash_api_key(key + "x")
    assert key not in digest


@pytest.mark.parametrize(
    ("credential", "expected"),
    [("rk_abc", True), ("rk_", True), ("eyJhbGciOi.x.y", False), ("RK_abc", False), ("", False)],
)
def test_looks_like_api_key(credential: str, expected: bool) -> None:
    assert looks_like_api_key(credential) is expected


def test_password_work_runs_in_the_hashing_threads_not_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from argon2 import PasswordHasher

    from app.core import security

    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    threads: list[str] = []

    class Recording:
        def hash(self, password: str) -> str:
            threads.append(threading.current_thread().name)
            return fast.hash(password)

        def verify(self, password_hash: str, password: str) -> bool:
            threads.append(threading.current_thread().name)
            return fast.verify(password_hash, password)

    monkeypatch.setattr(security, "_hasher", Recording())

    async def scenario() -> tuple[bool, bool, bool]:
        hashed = await hash_password_async("correct horse")
        return (
            await verify_password_async("correct horse", hashed),
            await verify_password_async("wrong horse", hashed),
            await verify_password_async("anything", None),
        )

    assert asyncio.run(scenario()) == (True, False, False)
    assert len(threads) == 4
    assert all(name.startswith("renum-argon2") for name in threads), threads


def test_tokens_carry_the_generation_they_were_issued_in(codec: TokenCodec) -> None:
    token, issued = codec.issue(uuid.uuid4(), "access", generation=7)
    assert jwt.decode(token, options={"verify_signature": False})["gen"] == 7
    assert codec.decode(token, "access") == issued
    assert issued.generation == 7


def test_a_token_without_a_generation_reads_as_the_first(codec: TokenCodec) -> None:
    token = jwt.encode(_claims(), SECRET, algorithm=JWT_ALGORITHM)
    assert codec.decode(token, "access").generation == 0


@pytest.mark.parametrize("generation", [-1, "1", 1.5, True, None, [1]])
def test_a_malformed_generation_is_refused(codec: TokenCodec, generation: object) -> None:
    token = jwt.encode(_claims(gen=generation), SECRET, algorithm=JWT_ALGORITHM)
    with pytest.raises(TokenError, match="malformed"):
        codec.decode(token, "access")
