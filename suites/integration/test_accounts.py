"""Accounts (tenants) over HTTP: admins create and list them; everyone else sees only their own."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from integration_support import assert_problem, pointers

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, Tenant, expect, unique_email, unique_name

ACCOUNTS = f"{API}/accounts"


def account_body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": unique_name(),
        "owner_email": unique_email("owner"),
        "owner_password": DEFAULT_PASSWORD,
        **overrides,
    }


def all_accounts(admin: ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = expect(admin.get(ACCOUNTS, params={"limit": 200, "offset": offset}), 200)
        items.extend(page["items"])
        offset += page["limit"]
        if offset >= page["total"]:
            return items


def test_admin_creates_an_account_whose_owner_can_log_in(
    admin_client: ApiClient, client: ApiClient
) -> None:
    body = account_body(owner_name="Ada Owner")
    created = expect(admin_client.post(ACCOUNTS, json=body), 201)
    assert created["name"] == body["name"]
    assert created["is_platform"] is False
    uuid.UUID(created["id"])
    created_at = datetime.fromisoformat(created["created_at"].replace("Z", "+00:00"))
    assert created_at.utcoffset() == timedelta(0)

    with ApiClient(str(client.base_url)) as owner:
        owner.login(body["owner_email"], DEFAULT_PASSWORD)
        me = expect(owner.get(f"{API}/users/me"), 200)
        assert me["role"] == "owner"
        assert me["account_id"] == created["id"]
        assert me["full_name"] == "Ada Owner"
        assert expect(owner.get(f"{ACCOUNTS}/{created['id']}"), 200) == created
    assert created["id"] in {account["id"] for account in all_accounts(admin_client)}


@pytest.mark.both_databases  # a unique index
def test_account_names_are_unique_regardless_of_case_and_spacing(admin_client: ApiClient) -> None:
    name = unique_name("Acme Research")
    expect(admin_client.post(ACCOUNTS, json=account_body(name=name)), 201)
    before = len(all_accounts(admin_client))
    for duplicate in (name, name.upper(), name.lower(), "  " + name.replace(" ", "   ") + " "):
        body = assert_problem(admin_client.post(ACCOUNTS, json=account_body(name=duplicate)), 409)
        assert "already exists" in body["detail"]
    assert len(all_accounts(admin_client)) == before


@pytest.mark.both_databases  # a unique index
def test_duplicate_owner_email_is_409_and_changes_nothing(
    admin_client: ApiClient, tenant: Tenant
) -> None:
    name = unique_name()
    for email in (tenant.owner.email, tenant.member.email.upper()):
        assert_problem(
            admin_client.post(ACCOUNTS, json=account_body(name=name, owner_email=email)), 409
        )
    # The refused request left no account behind: its name is still free.
    expect(admin_client.post(ACCOUNTS, json=account_body(name=name)), 201)


def test_admin_lists_accounts_with_pagination(
    admin_client: ApiClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    page = expect(admin_client.get(ACCOUNTS), 200)
    assert set(page) == {"items", "total", "limit", "offset"}
    assert page["limit"] == 50
    assert page["offset"] == 0
    total = page["total"]
    assert total >= 3  # the platform account and the two tenants

    ids = [item["id"] for item in all_accounts(admin_client)]
    assert len(ids) == len(set(ids)) == total
    assert {tenant.account_id, other_tenant.account_id} <= set(ids)
    assert sum(1 for item in all_accounts(admin_client) if item["is_platform"]) == 1

    walked: list[str] = []
    for offset in range(0, total, 2):
        chunk = expect(admin_client.get(ACCOUNTS, params={"limit": 2, "offset": offset}), 200)
        assert chunk["limit"] == 2
        assert chunk["offset"] == offset
        assert chunk["total"] == total
        assert len(chunk["items"]) == min(2, total - offset)
        walked.extend(item["id"] for item in chunk["items"])
    assert walked == ids

    beyond = expect(admin_client.get(ACCOUNTS, params={"offset": total}), 200)
    assert beyond["items"] == []
    assert beyond["total"] == total


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"limit": 0}, "/query/limit"),
        ({"limit": 201}, "/query/limit"),
        ({"limit": -1}, "/query/limit"),
        ({"limit": "ten"}, "/query/limit"),
        ({"offset": -1}, "/query/offset"),
        ({"offset": "x"}, "/query/offset"),
        ({"offset": 10**12}, "/query/offset"),
    ],
)
def test_paging_bounds_are_422(
    admin_client: ApiClient, params: dict[str, Any], pointer: str
) -> None:
    body = assert_problem(admin_client.get(ACCOUNTS, params=params), 422)
    assert pointers(body) == {pointer}


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
def test_only_admins_create_and_list_accounts(
    owner_client: ApiClient,
    member_client: ApiClient,
    viewer_client: ApiClient,
    admin_client: ApiClient,
    role: str,
) -> None:
    caller = {"owner": owner_client, "member": member_client, "viewer": viewer_client}[role]
    before = expect(admin_client.get(ACCOUNTS), 200)["total"]
    assert_problem(caller.post(ACCOUNTS, json=account_body()), 403)
    assert_problem(caller.get(ACCOUNTS), 403)
    assert expect(admin_client.get(ACCOUNTS), 200)["total"] == before


def test_anonymous_cannot_touch_accounts(client: ApiClient, tenant: Tenant) -> None:
    assert_problem(client.post(ACCOUNTS, json=account_body()), 401)
    assert_problem(client.get(ACCOUNTS), 401)
    assert_problem(client.get(f"{ACCOUNTS}/{tenant.account_id}"), 401)


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
def test_users_read_their_own_account(
    owner_client: ApiClient,
    member_client: ApiClient,
    viewer_client: ApiClient,
    tenant: Tenant,
    role: str,
) -> None:
    caller = {"owner": owner_client, "member": member_client, "viewer": viewer_client}[role]
    account = expect(caller.get(f"{ACCOUNTS}/{tenant.account_id}"), 200)
    assert account["id"] == tenant.account_id
    assert account["name"] == tenant.name


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
def test_another_account_is_404_like_an_unknown_one(
    owner_client: ApiClient,
    member_client: ApiClient,
    viewer_client: ApiClient,
    other_tenant: Tenant,
    role: str,
) -> None:
    caller = {"owner": owner_client, "member": member_client, "viewer": viewer_client}[role]
    other = assert_problem(caller.get(f"{ACCOUNTS}/{other_tenant.account_id}"), 404)
    unknown = assert_problem(caller.get(f"{ACCOUNTS}/{uuid.uuid4()}"), 404)
    assert other["detail"] == unknown["detail"]
    assert other_tenant.name not in other["detail"]


def test_admin_reads_any_account_and_unknown_is_404(
    admin_client: ApiClient, other_tenant: Tenant
) -> None:
    account = expect(admin_client.get(f"{ACCOUNTS}/{other_tenant.account_id}"), 200)
    assert account["name"] == other_tenant.name
    assert_problem(admin_client.get(f"{ACCOUNTS}/{uuid.uuid4()}"), 404)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "0b1c" * 10])
def test_malformed_account_id_is_422(admin_client: ApiClient, bad_id: str) -> None:
    body = assert_problem(admin_client.get(f"{ACCOUNTS}/{bad_id}"), 422)
    assert pointers(body) == {"/path/account_id"}


def test_create_body_is_validated(admin_client: ApiClient) -> None:
    before = expect(admin_client.get(ACCOUNTS), 200)["total"]
    body = assert_problem(
        admin_client.post(
            ACCOUNTS,
            json={"name": "", "owner_email": "not-an-email", "owner_password": "short", "x": 1},
        ),
        422,
    )
    assert pointers(body) == {"/body/name", "/body/owner_email", "/body/owner_password", "/body/x"}
    body = assert_problem(admin_client.post(ACCOUNTS, json={}), 422)
    assert pointers(body) == {"/body/name", "/body/owner_email", "/body/owner_password"}
    body = assert_problem(admin_client.post(ACCOUNTS, json=account_body(name="   ")), 422)
    assert pointers(body) == {"/body/name"}
    assert expect(admin_client.get(ACCOUNTS), 200)["total"] == before
