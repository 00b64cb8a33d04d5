"""Logging in, refreshing, logging out and revocation, over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from integration_support import MakeUser, assert_problem, assert_unauthorized, bearer, jwt_payload

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, Member, Tenant, expect, unique_email

# Both databases: refresh-token rotation, replay and revocation are transactions: on each database.
pytestmark = pytest.mark.both_databases


def token_request(client: httpx.Client, email: str, password: str) -> httpx.Response:
    return client.post(f"{API}/auth/token", data={"username": email, "password": password})


def refresh(client: httpx.Client, refresh_token: str) -> httpx.Response:
    return client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})


def logout(client: httpx.Client, refresh_token: str) -> httpx.Response:
    return client.post(f"{API}/auth/logout", json={"refresh_token": refresh_token})


def login_pair(client: httpx.Client, member: Member) -> dict[str, Any]:
    return expect(token_request(client, member.email, member.password), 200)


def me(client: httpx.Client, access_token: str) -> httpx.Response:
    return client.get(f"{API}/users/me", headers=bearer(access_token))


def test_login_returns_working_access_and_refresh_tokens(client: ApiClient, tenant: Tenant) -> None:
    tokens = login_pair(client, tenant.member)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] > 0
    assert tokens["access_token"] != tokens["refresh_token"]
    assert jwt_payload(tokens["access_token"])["typ"] == "access"
    assert jwt_payload(tokens["refresh_token"])["typ"] == "refresh"
    profile = expect(me(client, tokens["access_token"]), 200)
    assert profile["email"] == tenant.member.email
    assert profile["role"] == "member"
    assert profile["account_id"] == tenant.account_id
    assert profile["last_login_at"] is not None
    assert not {"password", "password_hash"} & profile.keys()


def test_login_email_is_case_insensitive(client: ApiClient, tenant: Tenant) -> None:
    response = token_request(client, tenant.viewer.email.upper(), tenant.viewer.password)
    assert expect(response, 200)["access_token"]


def test_login_with_wrong_password_is_401(client: ApiClient, tenant: Tenant) -> None:
    body = assert_unauthorized(token_request(client, tenant.member.email, "wrong-password-123"))
    assert "password" in body["detail"].lower()


def test_login_with_unknown_email_is_401_and_says_the_same(
    client: ApiClient, tenant: Tenant
) -> None:
    unknown = assert_unauthorized(token_request(client, unique_email("ghost"), DEFAULT_PASSWORD))
    wrong = assert_unauthorized(token_request(client, tenant.member.email, "wrong-password-123"))
    # Whether an email is registered is not revealed.
    assert unknown["detail"] == wrong["detail"]


def test_login_without_form_fields_is_422(client: ApiClient) -> None:
    body = assert_problem(client.post(f"{API}/auth/token", data={}), 422)
    assert {"/body/username", "/body/password"} <= {e["pointer"] for e in body["errors"]}


def test_deactivated_user_cannot_log_in(
    client: ApiClient, owner_client: ApiClient, make_user: MakeUser
) -> None:
    user = make_user("member")
    expect(owner_client.patch(f"{API}/users/{user.id}", json={"is_active": False}), 200)
    assert_unauthorized(token_request(client, user.email, user.password))


def test_access_token_of_a_deactivated_user_stops_working(
    client: ApiClient, owner_client: ApiClient, make_user: MakeUser
) -> None:
    user = make_user("member")
    tokens = login_pair(client, user)
    expect(me(client, tokens["access_token"]), 200)
    expect(owner_client.patch(f"{API}/users/{user.id}", json={"is_active": False}), 200)
    assert_unauthorized(me(client, tokens["access_token"]))
    assert_unauthorized(refresh(client, tokens["refresh_token"]))
    # Reactivated, the user logs in again (the old refresh token stays revoked).
    expect(owner_client.patch(f"{API}/users/{user.id}", json={"is_active": True}), 200)
    assert_unauthorized(refresh(client, tokens["refresh_token"]))
    expect(me(client, login_pair(client, user)["access_token"]), 200)


def test_refresh_rotates_the_pair(client: ApiClient, tenant: Tenant) -> None:
    first = login_pair(client, tenant.member)
    second = expect(refresh(client, first["refresh_token"]), 200)
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert expect(me(client, second["access_token"]), 200)["email"] == tenant.member.email
    third = expect(refresh(client, second["refresh_token"]), 200)
    expect(me(client, third["access_token"]), 200)


def test_replayed_refresh_token_revokes_the_whole_family(client: ApiClient, tenant: Tenant) -> None:
    first = login_pair(client, tenant.member)
    second = expect(refresh(client, first["refresh_token"]), 200)
    # The old refresh token presented again: a replay.
    assert_unauthorized(refresh(client, first["refresh_token"]))
    # ... which ends the session: the rotated, never-used newer token is revoked too.
    assert_unauthorized(refresh(client, second["refresh_token"]))


def test_replay_does_not_end_other_sessions_of_the_user(client: ApiClient, tenant: Tenant) -> None:
    stolen = login_pair(client, tenant.member)
    other_session = login_pair(client, tenant.member)
    expect(refresh(client, stolen["refresh_token"]), 200)
    assert_unauthorized(refresh(client, stolen["refresh_token"]))
    expect(refresh(client, other_session["refresh_token"]), 200)


def test_logout_revokes_the_refresh_token_and_is_idempotent(
    client: ApiClient, tenant: Tenant
) -> None:
    tokens = login_pair(client, tenant.member)
    response = logout(client, tokens["refresh_token"])
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_unauthorized(refresh(client, tokens["refresh_token"]))
    assert logout(client, tokens["refresh_token"]).status_code == 204


def test_logout_ends_the_rotated_session(client: ApiClient, tenant: Tenant) -> None:
    first = login_pair(client, tenant.member)
    second = expect(refresh(client, first["refresh_token"]), 200)
    assert logout(client, second["refresh_token"]).status_code == 204
    assert_unauthorized(refresh(client, second["refresh_token"]))


def test_logout_and_refresh_refuse_access_tokens_and_garbage(
    client: ApiClient, tenant: Tenant
) -> None:
    tokens = login_pair(client, tenant.member)
    for bad in (tokens["access_token"], "not-a-token", tokens["refresh_token"] + "x"):
        assert_unauthorized(refresh(client, bad))
        assert_unauthorized(logout(client, bad))
    # Nothing above harmed the real session.
    expect(refresh(client, tokens["refresh_token"]), 200)


def test_refresh_body_is_validated(client: ApiClient) -> None:
    body = assert_problem(client.post(f"{API}/auth/refresh", json={}), 422)
    assert {e["pointer"] for e in body["errors"]} == {"/body/refresh_token"}
    body = assert_problem(
        client.post(f"{API}/auth/refresh", json={"refresh_token": "x", "extra": 1}), 422
    )
    assert "/body/extra" in {e["pointer"] for e in body["errors"]}


def test_password_change_ends_access_and_refresh_tokens(
    client: ApiClient, owner_client: ApiClient, make_user: MakeUser
) -> None:
    user = make_user("member")
    before = login_pair(client, user)
    expect(me(client, before["access_token"]), 200)
    new_password = "a-brand-new-passphrase"
    expect(owner_client.patch(f"{API}/users/{user.id}", json={"password": new_password}), 200)
    assert_unauthorized(me(client, before["access_token"]))
    assert_unauthorized(refresh(client, before["refresh_token"]))
    assert_unauthorized(token_request(client, user.email, user.password))
    after = expect(token_request(client, user.email, new_password), 200)
    expect(me(client, after["access_token"]), 200)
    rotated = expect(refresh(client, after["refresh_token"]), 200)
    expect(me(client, rotated["access_token"]), 200)


def test_deleted_user_credentials_stop_working(
    client: ApiClient, owner_client: ApiClient, make_user: MakeUser
) -> None:
    user = make_user("member")
    tokens = login_pair(client, user)
    assert owner_client.delete(f"{API}/users/{user.id}").status_code == 204
    assert_unauthorized(me(client, tokens["access_token"]))
    assert_unauthorized(refresh(client, tokens["refresh_token"]))
    assert_unauthorized(token_request(client, user.email, user.password))
