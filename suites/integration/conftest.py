"""Fixtures of the integration suite: throw-away users, fresh logins and token forging.

The session-scoped fixtures of ``qa.plugin`` (``tenant``, ``owner_client``, ...) are shared by
every test and must not be mutated; tests that deactivate, demote, delete or re-password a user
make their own with ``make_user`` and log in with ``fresh_login``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from integration_support import Forge, FreshLogin, MakeUser

from qa.client import ApiClient
from qa.factories import Member, Tenant, create_user
from qa.launcher import Backend, LaunchedBackend
from qa.plugin import SENDS_BURSTS

JWT_AUDIENCE = "renum-api"
JWT_ISSUER = "renum"
JWT_ALGORITHM = "HS256"


@pytest.fixture
def fresh_login(backend: Backend) -> Iterator[FreshLogin]:
    """``fresh_login(member)``: a new client logged in as that member, closed after the test."""
    opened: list[ApiClient] = []

    def make(member: Member) -> ApiClient:
        logged_in = ApiClient(backend.base_url).login(member.email, member.password)
        opened.append(logged_in)
        return logged_in

    yield make
    for opened_client in opened:
        opened_client.close()


@pytest.fixture
def make_user(owner_client: ApiClient) -> MakeUser:
    """``make_user(role, **fields)``: a new user of ``tenant``, created by its owner."""

    def make(role: str = "member", **fields: Any) -> Member:
        return create_user(owner_client, role, **fields)

    return make


@pytest.fixture(scope="session")
def secret_key(backend: Backend) -> str:
    """The launched server's JWT secret; a deployment's secret is not known to the harness."""
    if not isinstance(backend, LaunchedBackend):
        pytest.skip("forging signed tokens needs the server's secret; --target hides it")
    return backend.env["RENUM_SECRET_KEY"]


def valid_claims(subject: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "jti": str(uuid.uuid4()),
        "typ": "access",
        "aud": JWT_AUDIENCE,
        "iss": JWT_ISSUER,
        "iat": now,
        "exp": now + 600,
    }
    for name, value in overrides.items():
        if value is ...:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


@pytest.fixture(scope="session")
def forge(secret_key: str) -> Forge:
    """``forge(subject, key=..., algorithm=..., **claims)``: a JWT signed like the server's.

    A claim given as ``...`` is left out.
    """

    def make(
        subject: str, *, key: str | None = None, algorithm: str = JWT_ALGORITHM, **claims: Any
    ) -> str:
        return jwt.encode(valid_claims(subject, **claims), key or secret_key, algorithm=algorithm)

    return make


@pytest.fixture(scope="session")
def other_api_key(other_owner_client: ApiClient, other_tenant: Tenant) -> dict[str, Any]:
    """An API key of the other tenant (its id and secret)."""
    response = other_owner_client.post("/api/v1/api-keys", json={"name": "other-tenant-key"})
    assert response.status_code == 201, response.text
    return response.json()


def pytest_configure(config: pytest.Config) -> None:
    # The shared backend serves hundreds of tests from one address (forged and expired tokens,
    # unknown ids, wrong passwords): its throttling thresholds are raised. The throttling is
    # tested on backends of its own, launched with low ones (test_security_throttle.py).
    config.stash[SENDS_BURSTS] = True
