"""Logging in, refreshing, logging out and revocation, over HTTP."""

from __future__ import annotations

from qa.client import API, ApiClient
from qa.factories import Tenant, expect


def test_login_returns_working_access_and_refresh_tokens(client: ApiClient, tenant: Tenant) -> None:
    tokens = expect(
        client.post(
            f"{API}/auth/token",
            data={"username": tenant.member.email, "password": tenant.member.password},
        ),
        200,
    )
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] > 0
    me = client.get(
        f"{API}/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert expect(me, 200)["email"] == tenant.member.email
