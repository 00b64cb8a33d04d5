"""API keys over HTTP: created once with their secret, usable as bearer credentials wherever a
JWT is, listed without secrets, revoked, and never more powerful than their creator."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from integration_support import (
    API_KEY_SHAPE,
    FreshLogin,
    MakeUser,
    assert_problem,
    assert_unauthorized,
    bearer,
    pointers,
)

from qa.client import API, ApiClient
from qa.factories import Tenant, expect

KEYS = f"{API}/api-keys"


def create_key(creator: ApiClient, name: str = "ci", **fields: Any) -> dict[str, Any]:
    return expect(creator.post(KEYS, json={"name": name, **fields}), 201)


def list_keys(lister: ApiClient) -> list[dict[str, Any]]:
    page = expect(lister.get(KEYS, params={"limit": 200}), 200)
    assert page["total"] <= 200, "more keys than one page; page through them"
    return list(page["items"])


def test_create_returns_the_key_once(owner_client: ApiClient, tenant: Tenant) -> None:
    response = owner_client.post(KEYS, json={"name": "deploy-bot"})
    created = expect(response, 201)
    secret = created["key"]
    assert API_KEY_SHAPE.match(secret), secret
    # >= 128 random bits: 43 url-safe characters carry 256.
    assert len(secret) - len("rk_") >= 43
    assert created["name"] == "deploy-bot"
    assert created["role"] == "owner"  # defaults to the creator's role
    assert created["user_id"] == tenant.owner.id
    assert secret.startswith(created["prefix"])
    assert len(created["prefix"]) < len(secret) // 2
    assert created["revoked_at"] is None
    assert created["expires_at"] is None

    listing = owner_client.get(KEYS, params={"limit": 200})
    assert secret not in listing.text
    listed = {item["id"]: item for item in expect(listing, 200)["items"]}
    assert created["id"] in listed
    assert "key" not in listed[created["id"]]
    assert "key_hash" not in listed[created["id"]]
    assert listed[created["id"]]["prefix"] == created["prefix"]


def test_two_keys_are_different(member_client: ApiClient) -> None:
    first = create_key(member_client)
    second = create_key(member_client)
    assert first["key"] != second["key"]
    assert first["id"] != second["id"]


def test_key_works_wherever_a_jwt_does(
    client: ApiClient, owner_client: ApiClient, tenant: Tenant
) -> None:
    key = create_key(owner_client)["key"]
    headers = bearer(key)
    me = expect(client.get(f"{API}/users/me", headers=headers), 200)
    assert me["id"] == tenant.owner.id
    account = expect(client.get(f"{API}/accounts/{tenant.account_id}", headers=headers), 200)
    assert account["id"] == tenant.account_id
    users = expect(client.get(f"{API}/users", headers=headers), 200)
    assert tenant.member.id in {user["id"] for user in users["items"]}
    expect(client.get(KEYS, headers=headers), 200)
    # A key can also make a key (no more powerful than itself).
    made = expect(client.post(KEYS, json={"name": "child"}, headers=headers), 201)
    assert made["role"] == "owner"
    expect(client.get(f"{API}/users/me", headers=bearer(made["key"])), 200)


def test_key_last_used_is_recorded(client: ApiClient, member_client: ApiClient) -> None:
    created = create_key(member_client)
    assert created["last_used_at"] is None
    expect(client.get(f"{API}/users/me", headers=bearer(created["key"])), 200)
    listed = {item["id"]: item for item in list_keys(member_client)}
    assert listed[created["id"]]["last_used_at"] is not None


def test_revoked_key_is_refused(client: ApiClient, member_client: ApiClient) -> None:
    created = create_key(member_client)
    expect(client.get(f"{API}/users/me", headers=bearer(created["key"])), 200)
    response = member_client.delete(f"{KEYS}/{created['id']}")
    assert response.status_code == 204, response.text
    assert_unauthorized(client.get(f"{API}/users/me", headers=bearer(created["key"])))
    listed = {item["id"]: item for item in list_keys(member_client)}
    assert listed[created["id"]]["revoked_at"] is not None
    # Revoking again changes nothing and is not an error.
    assert member_client.delete(f"{KEYS}/{created['id']}").status_code == 204
    assert_unauthorized(client.get(f"{API}/users/me", headers=bearer(created["key"])))


def test_unknown_and_malformed_keys_are_refused(
    client: ApiClient, member_client: ApiClient
) -> None:
    real = create_key(member_client)["key"]
    for fake in ("rk_" + "A" * 43, "rk_", "rk_short", real[:-1], real + "x", real.upper()):
        assert_unauthorized(client.get(f"{API}/users/me", headers=bearer(fake)))


@pytest.mark.parametrize(
    ("creator", "role"),
    [
        ("member", "owner"),
        ("member", "admin"),
        ("owner", "admin"),
        ("viewer", "viewer"),
        ("viewer", "member"),
    ],
)
def test_key_role_cannot_exceed_the_creators(
    owner_client: ApiClient,
    member_client: ApiClient,
    viewer_client: ApiClient,
    creator: str,
    role: str,
) -> None:
    creating = {"owner": owner_client, "member": member_client, "viewer": viewer_client}[creator]
    before = creating.get(KEYS, params={"limit": 200}).json()["total"]
    assert_problem(creating.post(KEYS, json={"name": "too-strong", "role": role}), 403)
    assert creating.get(KEYS, params={"limit": 200}).json()["total"] == before


def test_viewer_cannot_create_keys(viewer_client: ApiClient) -> None:
    assert_problem(viewer_client.post(KEYS, json={"name": "nope"}), 403)


def test_owner_key_does_owner_things(client: ApiClient, owner_client: ApiClient) -> None:
    key = create_key(owner_client, role="owner")["key"]
    users = expect(client.get(f"{API}/users", headers=bearer(key)), 200)
    assert users["total"] >= 3


def test_lower_role_key_is_held_to_its_role(
    client: ApiClient, owner_client: ApiClient, tenant: Tenant
) -> None:
    viewer_key = create_key(owner_client, role="viewer")
    assert viewer_key["role"] == "viewer"
    headers = bearer(viewer_key["key"])
    # Reading its own profile is fine...
    expect(client.get(f"{API}/users/me", headers=headers), 200)
    # ... owner (and member) things are not.
    assert_problem(client.get(f"{API}/users", headers=headers), 403)
    assert_problem(client.get(f"{API}/users/{tenant.member.id}", headers=headers), 403)
    assert_problem(
        client.patch(f"{API}/users/{tenant.member.id}", json={"full_name": "x"}, headers=headers),
        403,
    )
    assert_problem(client.post(KEYS, json={"name": "escalate"}, headers=headers), 403)
    assert_problem(client.delete(f"{KEYS}/{viewer_key['id']}", headers=headers), 403)

    member_key = create_key(owner_client, role="member")
    assert_problem(client.get(f"{API}/users", headers=bearer(member_key["key"])), 403)
    child = expect(
        client.post(KEYS, json={"name": "child"}, headers=bearer(member_key["key"])), 201
    )
    assert child["role"] == "member"
    assert_problem(
        client.post(
            KEYS, json={"name": "escalate", "role": "owner"}, headers=bearer(member_key["key"])
        ),
        403,
    )


def test_key_loses_power_when_its_creator_is_demoted(
    client: ApiClient, owner_client: ApiClient, make_user: MakeUser, fresh_login: FreshLogin
) -> None:
    co_owner = make_user("owner")
    key = create_key(fresh_login(co_owner), role="owner")["key"]
    expect(client.get(f"{API}/users", headers=bearer(key)), 200)
    expect(owner_client.patch(f"{API}/users/{co_owner.id}", json={"role": "member"}), 200)
    assert_problem(client.get(f"{API}/users", headers=bearer(key)), 403)


def test_key_of_a_deactivated_user_is_refused(
    client: ApiClient, owner_client: ApiClient, make_user: MakeUser, fresh_login: FreshLogin
) -> None:
    user = make_user("member")
    key = create_key(fresh_login(user))["key"]
    expect(client.get(f"{API}/users/me", headers=bearer(key)), 200)
    expect(owner_client.patch(f"{API}/users/{user.id}", json={"is_active": False}), 200)
    assert_unauthorized(client.get(f"{API}/users/me", headers=bearer(key)))


def test_members_see_their_own_keys_and_owners_see_all(
    owner_client: ApiClient,
    member_client: ApiClient,
    viewer_client: ApiClient,
    other_owner_client: ApiClient,
    tenant: Tenant,
) -> None:
    member_key = create_key(member_client, name="member-key")
    owner_key = create_key(owner_client, name="owner-key")

    member_view = list_keys(member_client)
    assert {key["user_id"] for key in member_view} == {tenant.member.id}
    assert member_key["id"] in {key["id"] for key in member_view}

    owner_view = {key["id"] for key in list_keys(owner_client)}
    assert {member_key["id"], owner_key["id"]} <= owner_view

    # A viewer may list (its own: none) but sees nobody else's.
    assert all(key["user_id"] == tenant.viewer.id for key in list_keys(viewer_client))
    # The other account's owner sees none of this account's keys.
    assert not owner_view & {key["id"] for key in list_keys(other_owner_client)}


def test_member_cannot_revoke_someone_elses_key(
    client: ApiClient, owner_client: ApiClient, member_client: ApiClient
) -> None:
    owner_key = create_key(owner_client)
    assert_problem(member_client.delete(f"{KEYS}/{owner_key['id']}"), 404)
    expect(client.get(f"{API}/users/me", headers=bearer(owner_key["key"])), 200)


def test_owner_can_revoke_a_members_key(
    client: ApiClient, owner_client: ApiClient, member_client: ApiClient
) -> None:
    member_key = create_key(member_client)
    assert owner_client.delete(f"{KEYS}/{member_key['id']}").status_code == 204
    assert_unauthorized(client.get(f"{API}/users/me", headers=bearer(member_key["key"])))


def test_revoking_another_accounts_key_is_404(
    client: ApiClient, owner_client: ApiClient, other_api_key: dict[str, Any]
) -> None:
    assert_problem(owner_client.delete(f"{KEYS}/{other_api_key['id']}"), 404)
    expect(client.get(f"{API}/users/me", headers=bearer(other_api_key["key"])), 200)


def test_revoking_an_unknown_or_malformed_id(owner_client: ApiClient) -> None:
    assert_problem(owner_client.delete(f"{KEYS}/00000000-0000-4000-8000-000000000000"), 404)
    body = assert_problem(owner_client.delete(f"{KEYS}/not-a-uuid"), 422)
    assert pointers(body) == {"/path/key_id"}


@pytest.mark.parametrize(
    "expires_at",
    [
        # A fixed id: the value changes with the clock, test ids must not (pytest-xdist).
        pytest.param((datetime.now(UTC) - timedelta(minutes=5)).isoformat(), id="minutes-ago"),
        "2001-01-01T00:00:00Z",
        "2001-01-01T00:00:00",  # naive: read as UTC
    ],
)
def test_expiry_in_the_past_is_422(member_client: ApiClient, expires_at: str) -> None:
    body = assert_problem(
        member_client.post(KEYS, json={"name": "stale", "expires_at": expires_at}), 422
    )
    assert pointers(body) == {"/body/expires_at"}


def test_create_body_is_validated(member_client: ApiClient) -> None:
    body = assert_problem(
        member_client.post(
            KEYS, json={"name": "", "role": "superuser", "expires_at": "soon", "scope": "all"}
        ),
        422,
    )
    assert pointers(body) == {"/body/name", "/body/role", "/body/expires_at", "/body/scope"}


def test_key_expires(client: ApiClient, member_client: ApiClient) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    created = create_key(member_client, expires_at=expires.isoformat())
    stored = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert stored.utcoffset() == timedelta(0)
    assert abs(stored - expires) < timedelta(seconds=1)
    expect(client.get(f"{API}/users/me", headers=bearer(created["key"])), 200)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    assert_unauthorized(client.get(f"{API}/users/me", headers=bearer(created["key"])))


def test_admin_key_does_admin_things(client: ApiClient, admin_client: ApiClient) -> None:
    key = create_key(admin_client, role="admin")["key"]
    expect(client.get(f"{API}/accounts", headers=bearer(key)), 200)
    member_level = create_key(admin_client, role="member")["key"]
    assert_problem(client.get(f"{API}/accounts", headers=bearer(member_level)), 403)
