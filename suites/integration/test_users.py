"""User management over HTTP: owners manage their account's users, admins every account's;
members and viewers manage nobody."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from integration_support import (
    FreshLogin,
    MakeUser,
    assert_problem,
    assert_unauthorized,
    bearer,
    pointers,
)

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, Tenant, expect, unique_email
from qa.launcher import Backend

USERS = f"{API}/users"


def all_users(caller: ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = expect(caller.get(USERS, params={"limit": 200, "offset": offset}), 200)
        items.extend(page["items"])
        offset += page["limit"]
        if offset >= page["total"]:
            return items


def test_me_describes_the_caller(owner_client: ApiClient, tenant: Tenant) -> None:
    me = expect(owner_client.get(f"{USERS}/me"), 200)
    assert me["id"] == tenant.owner.id
    assert me["email"] == tenant.owner.email
    assert me["role"] == "owner"
    assert me["is_active"] is True
    assert set(me) == {
        "id",
        "account_id",
        "email",
        "full_name",
        "role",
        "is_active",
        "created_at",
        "last_login_at",
    }


def test_owner_lists_only_their_accounts_users(
    owner_client: ApiClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    users = all_users(owner_client)
    assert {user["account_id"] for user in users} == {tenant.account_id}
    ids = {user["id"] for user in users}
    assert {tenant.owner.id, tenant.member.id, tenant.viewer.id} <= ids
    assert not ids & {other_tenant.owner.id, other_tenant.member.id, other_tenant.viewer.id}
    assert all("password_hash" not in user for user in users)
    page = expect(owner_client.get(USERS, params={"limit": 1}), 200)
    assert len(page["items"]) == 1
    assert page["total"] == len(users)


@pytest.mark.parametrize("role", ["member", "viewer", "owner"])
def test_owner_creates_users_of_each_account_role(
    owner_client: ApiClient, fresh_login: FreshLogin, tenant: Tenant, make_user: MakeUser, role: str
) -> None:
    user = make_user(role, full_name=f"New {role}")
    shown = expect(owner_client.get(f"{USERS}/{user.id}"), 200)
    assert shown["role"] == role
    assert shown["full_name"] == f"New {role}"
    assert shown["account_id"] == tenant.account_id
    assert shown["email"] == user.email
    assert shown["last_login_at"] is None
    me = expect(fresh_login(user).get(f"{USERS}/me"), 200)
    assert me["id"] == user.id


def test_new_owner_can_manage_users(fresh_login: FreshLogin, make_user: MakeUser) -> None:
    co_owner = fresh_login(make_user("owner"))
    expect(co_owner.get(USERS), 200)
    created = expect(
        co_owner.post(USERS, json={"email": unique_email(), "password": DEFAULT_PASSWORD}), 201
    )
    assert created["role"] == "member"  # the default


def test_email_is_stored_lowercase(owner_client: ApiClient) -> None:
    email = unique_email("MiXeD.Case")
    assert email != email.lower()
    created = expect(
        owner_client.post(USERS, json={"email": email, "password": DEFAULT_PASSWORD}), 201
    )
    assert created["email"] == email.lower()


@pytest.mark.both_databases  # a unique index
def test_duplicate_email_is_409_regardless_of_case(
    owner_client: ApiClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    before = len(all_users(owner_client))
    for email in (
        tenant.member.email,
        tenant.member.email.upper(),
        other_tenant.viewer.email,  # emails are unique across accounts
    ):
        body = assert_problem(
            owner_client.post(USERS, json={"email": email, "password": DEFAULT_PASSWORD}), 409
        )
        assert other_tenant.name not in body["detail"]
    assert len(all_users(owner_client)) == before


def test_create_body_is_validated(owner_client: ApiClient) -> None:
    before = len(all_users(owner_client))
    body = assert_problem(
        owner_client.post(
            USERS,
            json={"email": "nope", "password": "short", "role": "admin", "nickname": "x"},
        ),
        422,
    )
    assert pointers(body) == {"/body/email", "/body/password", "/body/role", "/body/nickname"}
    assert len(all_users(owner_client)) == before


def test_owner_cannot_create_users_in_another_account(
    owner_client: ApiClient, other_tenant: Tenant
) -> None:
    assert_problem(
        owner_client.post(
            USERS,
            json={
                "email": unique_email(),
                "password": DEFAULT_PASSWORD,
                "account_id": other_tenant.account_id,
            },
        ),
        404,
    )


def test_owner_may_name_their_own_account(owner_client: ApiClient, tenant: Tenant) -> None:
    created = expect(
        owner_client.post(
            USERS,
            json={
                "email": unique_email(),
                "password": DEFAULT_PASSWORD,
                "account_id": tenant.account_id,
            },
        ),
        201,
    )
    assert created["account_id"] == tenant.account_id


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_cannot_manage_users(
    member_client: ApiClient, viewer_client: ApiClient, tenant: Tenant, role: str
) -> None:
    caller = {"member": member_client, "viewer": viewer_client}[role]
    target = tenant.viewer.id if role == "member" else tenant.member.id
    assert_problem(caller.get(USERS), 403)
    assert_problem(
        caller.post(USERS, json={"email": unique_email(), "password": DEFAULT_PASSWORD}), 403
    )
    assert_problem(caller.get(f"{USERS}/{target}"), 403)
    assert_problem(caller.patch(f"{USERS}/{target}", json={"full_name": "hacked"}), 403)
    assert_problem(caller.delete(f"{USERS}/{target}"), 403)
    # ... and cannot promote themselves either.
    own_id = tenant.member.id if role == "member" else tenant.viewer.id
    assert_problem(caller.patch(f"{USERS}/{own_id}", json={"role": "owner"}), 403)
    assert expect(caller.get(f"{USERS}/me"), 200)["role"] == role


def test_patch_full_name(owner_client: ApiClient, make_user: MakeUser) -> None:
    user = make_user("member", full_name="Before")
    changed = expect(owner_client.patch(f"{USERS}/{user.id}", json={"full_name": "After"}), 200)
    assert changed["full_name"] == "After"
    assert changed["role"] == "member"
    assert expect(owner_client.get(f"{USERS}/{user.id}"), 200)["full_name"] == "After"
    # An empty patch changes nothing.
    assert expect(owner_client.patch(f"{USERS}/{user.id}", json={}), 200) == changed


def test_patch_role_takes_effect_at_once(
    owner_client: ApiClient, fresh_login: FreshLogin, make_user: MakeUser
) -> None:
    user = make_user("member")
    session = fresh_login(user)
    expect(session.post(f"{API}/api-keys", json={"name": "allowed"}), 201)
    changed = expect(owner_client.patch(f"{USERS}/{user.id}", json={"role": "viewer"}), 200)
    assert changed["role"] == "viewer"
    # The same access token now carries viewer rights.
    assert_problem(session.post(f"{API}/api-keys", json={"name": "refused"}), 403)
    expect(owner_client.patch(f"{USERS}/{user.id}", json={"role": "owner"}), 200)
    expect(session.get(USERS), 200)


def test_patch_is_active(
    client: ApiClient, owner_client: ApiClient, fresh_login: FreshLogin, make_user: MakeUser
) -> None:
    user = make_user("viewer")
    token = str(fresh_login(user).tokens["access_token"])
    changed = expect(owner_client.patch(f"{USERS}/{user.id}", json={"is_active": False}), 200)
    assert changed["is_active"] is False
    assert_unauthorized(client.get(f"{USERS}/me", headers=bearer(token)))
    expect(owner_client.patch(f"{USERS}/{user.id}", json={"is_active": True}), 200)
    expect(fresh_login(user).get(f"{USERS}/me"), 200)
    # Reactivation does not revive the sessions the deactivation ended.
    assert_unauthorized(client.get(f"{USERS}/me", headers=bearer(token)))


def test_patch_password(
    client: ApiClient, owner_client: ApiClient, fresh_login: FreshLogin, make_user: MakeUser
) -> None:
    user = make_user("member")
    token = str(fresh_login(user).tokens["access_token"])
    expect(owner_client.patch(f"{USERS}/{user.id}", json={"password": "another-passphrase"}), 200)
    assert_unauthorized(client.get(f"{USERS}/me", headers=bearer(token)))
    token_url = f"{API}/auth/token"
    assert_unauthorized(
        client.post(token_url, data={"username": user.email, "password": user.password})
    )
    expect(
        client.post(token_url, data={"username": user.email, "password": "another-passphrase"}),
        200,
    )


def test_patch_body_is_validated(owner_client: ApiClient, tenant: Tenant) -> None:
    body = assert_problem(
        owner_client.patch(
            f"{USERS}/{tenant.member.id}",
            json={"role": "admin", "is_active": "maybe", "password": "short", "email": "x@y.z"},
        ),
        422,
    )
    assert pointers(body) == {"/body/role", "/body/is_active", "/body/password", "/body/email"}
    assert expect(owner_client.get(f"{USERS}/{tenant.member.id}"), 200)["role"] == "member"


@pytest.mark.parametrize("change", [{"role": "member"}, {"role": "viewer"}, {"is_active": False}])
def test_owner_cannot_change_own_role_or_deactivate_self(
    owner_client: ApiClient, tenant: Tenant, change: dict[str, Any]
) -> None:
    assert_problem(owner_client.patch(f"{USERS}/{tenant.owner.id}", json=change), 409)
    me = expect(owner_client.get(f"{USERS}/me"), 200)
    assert me["role"] == "owner"
    assert me["is_active"] is True


def test_owner_may_rename_self(fresh_login: FreshLogin, make_user: MakeUser) -> None:
    co_owner = make_user("owner")
    session = fresh_login(co_owner)
    renamed = expect(session.patch(f"{USERS}/{co_owner.id}", json={"full_name": "Me"}), 200)
    assert renamed["full_name"] == "Me"


def test_delete_user(owner_client: ApiClient, make_user: MakeUser) -> None:
    user = make_user("member")
    response = owner_client.delete(f"{USERS}/{user.id}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(owner_client.get(f"{USERS}/{user.id}"), 404)
    assert_problem(owner_client.delete(f"{USERS}/{user.id}"), 404)
    assert_problem(owner_client.patch(f"{USERS}/{user.id}", json={"full_name": "x"}), 404)
    assert user.id not in {item["id"] for item in all_users(owner_client)}
    # The email is free again.
    expect(owner_client.post(USERS, json={"email": user.email, "password": DEFAULT_PASSWORD}), 201)


def test_delete_user_with_keys_and_sessions(
    client: ApiClient, owner_client: ApiClient, fresh_login: FreshLogin, make_user: MakeUser
) -> None:
    user = make_user("member")
    session = fresh_login(user)
    key = expect(session.post(f"{API}/api-keys", json={"name": "bot"}), 201)
    assert owner_client.delete(f"{USERS}/{user.id}").status_code == 204
    assert_unauthorized(client.get(f"{USERS}/me", headers=bearer(key["key"])))
    keys = expect(owner_client.get(f"{API}/api-keys", params={"limit": 200}), 200)["items"]
    assert key["id"] not in {item["id"] for item in keys}


def test_owner_cannot_delete_self(owner_client: ApiClient, tenant: Tenant) -> None:
    assert_problem(owner_client.delete(f"{USERS}/{tenant.owner.id}"), 409)
    expect(owner_client.get(f"{USERS}/me"), 200)


def test_unknown_and_malformed_user_ids(owner_client: ApiClient) -> None:
    missing = uuid.uuid4()
    assert_problem(owner_client.get(f"{USERS}/{missing}"), 404)
    assert_problem(owner_client.patch(f"{USERS}/{missing}", json={"full_name": "x"}), 404)
    assert_problem(owner_client.delete(f"{USERS}/{missing}"), 404)
    for method in ("GET", "PATCH", "DELETE"):
        body = assert_problem(owner_client.request(method, f"{USERS}/not-a-uuid", json={}), 422)
        assert "/path/user_id" in pointers(body)


def test_admin_must_name_the_account(admin_client: ApiClient) -> None:
    body = assert_problem(
        admin_client.post(USERS, json={"email": unique_email(), "password": DEFAULT_PASSWORD}),
        422,
    )
    assert pointers(body) == {"/body/account_id"}


def test_admin_creating_in_an_unknown_account_is_404(admin_client: ApiClient) -> None:
    email = unique_email()
    assert_problem(
        admin_client.post(
            USERS,
            json={"email": email, "password": DEFAULT_PASSWORD, "account_id": str(uuid.uuid4())},
        ),
        404,
    )
    assert email not in {user["email"] for user in all_users(admin_client)}


def test_admin_creates_users_in_any_account(
    admin_client: ApiClient, owner_client: ApiClient, other_tenant: Tenant, tenant: Tenant
) -> None:
    created = expect(
        admin_client.post(
            USERS,
            json={
                "email": unique_email(),
                "password": DEFAULT_PASSWORD,
                "account_id": other_tenant.account_id,
                "role": "viewer",
            },
        ),
        201,
    )
    assert created["account_id"] == other_tenant.account_id
    assert created["role"] == "viewer"
    assert_problem(owner_client.get(f"{USERS}/{created['id']}"), 404)


def test_admin_sees_users_of_every_account(
    admin_client: ApiClient, tenant: Tenant, other_tenant: Tenant, backend: Backend
) -> None:
    users = all_users(admin_client)
    ids = {user["id"] for user in users}
    for someone in (tenant.owner, tenant.member, other_tenant.owner, other_tenant.viewer):
        assert someone.id in ids
    assert {tenant.account_id, other_tenant.account_id} <= {u["account_id"] for u in users}
    assert backend.admin_email in {user["email"] for user in users}
    shown = expect(admin_client.get(f"{USERS}/{other_tenant.member.id}"), 200)
    assert shown["email"] == other_tenant.member.email


def test_admin_manages_any_accounts_user(admin_client: ApiClient, owner_client: ApiClient) -> None:
    created = expect(
        owner_client.post(USERS, json={"email": unique_email(), "password": DEFAULT_PASSWORD}),
        201,
    )
    renamed = expect(
        admin_client.patch(f"{USERS}/{created['id']}", json={"full_name": "By admin"}), 200
    )
    assert renamed["full_name"] == "By admin"
    assert admin_client.delete(f"{USERS}/{created['id']}").status_code == 204
    assert_problem(owner_client.get(f"{USERS}/{created['id']}"), 404)


def test_admin_cannot_demote_or_deactivate_self(admin_client: ApiClient) -> None:
    me = expect(admin_client.get(f"{USERS}/me"), 200)
    assert me["role"] == "admin"
    assert_problem(admin_client.patch(f"{USERS}/{me['id']}", json={"is_active": False}), 409)
    assert_problem(admin_client.delete(f"{USERS}/{me['id']}"), 409)
    expect(admin_client.get(f"{USERS}/me"), 200)
