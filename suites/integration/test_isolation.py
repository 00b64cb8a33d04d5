"""Cross-account isolation: every route with an id answers 404 (never 403, never the object) when
the id belongs to another account, and leaves that object unchanged.

To cover a new route, add one line to ``ROUTES``; a new kind of object also needs an entry in
``MAKERS`` (how to create one in an account) and ``STILL_THERE`` (how its owner sees it intact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from integration_support import assert_problem, bearer

from qa.client import API, ApiClient
from qa.factories import Tenant, create_user, expect


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with an ``{id}`` placeholder
    kind: str  # which object the id names: a key of MAKERS
    body: dict[str, Any] | None = None
    ok: int = 200  # what the account's own owner gets for its own object


ROUTES = [
    Route("GET", f"{API}/users/{{id}}", "user"),
    Route("PATCH", f"{API}/users/{{id}}", "user", body={"full_name": "Renamed by a stranger"}),
    Route("PATCH", f"{API}/users/{{id}}", "user", body={"is_active": False}),
    Route("PATCH", f"{API}/users/{{id}}", "user", body={"password": "stolen-passphrase"}),
    Route("DELETE", f"{API}/users/{{id}}", "user", ok=204),
    Route("GET", f"{API}/accounts/{{id}}", "account"),
    Route("DELETE", f"{API}/api-keys/{{id}}", "api_key", ok=204),
]


@dataclass(frozen=True)
class Made:
    id: str
    secret: str | None = None  # an API key's secret, to prove it still works


def _make_user(owner: ApiClient, tenant: Tenant) -> Made:
    return Made(create_user(owner, "member", full_name="Original").id)


def _make_account(owner: ApiClient, tenant: Tenant) -> Made:
    return Made(tenant.account_id)


def _make_api_key(owner: ApiClient, tenant: Tenant) -> Made:
    created = expect(owner.post(f"{API}/api-keys", json={"name": "isolation"}), 201)
    return Made(created["id"], created["key"])


MAKERS: dict[str, Callable[[ApiClient, Tenant], Made]] = {
    "user": _make_user,
    "account": _make_account,
    "api_key": _make_api_key,
}


def _user_intact(owner: ApiClient, made: Made) -> None:
    user = expect(owner.get(f"{API}/users/{made.id}"), 200)
    assert user["full_name"] == "Original"
    assert user["is_active"] is True


def _account_intact(owner: ApiClient, made: Made) -> None:
    expect(owner.get(f"{API}/accounts/{made.id}"), 200)


def _api_key_intact(owner: ApiClient, made: Made) -> None:
    assert made.secret is not None
    expect(owner.get(f"{API}/users/me", headers=bearer(made.secret)), 200)
    keys = expect(owner.get(f"{API}/api-keys", params={"limit": 200}), 200)["items"]
    assert {key["id"]: key for key in keys}[made.id]["revoked_at"] is None


STILL_THERE: dict[str, Callable[[ApiClient, Made], None]] = {
    "user": _user_intact,
    "account": _account_intact,
    "api_key": _api_key_intact,
}


def _route_id(route: Route) -> str:
    extra = "" if route.body is None else " " + ",".join(route.body)
    return f"{route.method} {route.path}{extra}"


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_another_accounts_object_is_404(
    route: Route,
    owner_client: ApiClient,
    other_owner_client: ApiClient,
    other_tenant: Tenant,
) -> None:
    foreign = MAKERS[route.kind](other_owner_client, other_tenant)
    url = route.path.format(id=foreign.id)
    body = assert_problem(owner_client.request(route.method, url, json=route.body), 404)
    # Same answer as for an id that exists nowhere: nothing tells the two apart.
    unknown_url = route.path.format(id="00000000-0000-4000-8000-000000000000")
    unknown = assert_problem(owner_client.request(route.method, unknown_url, json=route.body), 404)
    assert body["detail"] == unknown["detail"]
    assert body["title"] == unknown["title"]
    STILL_THERE[route.kind](other_owner_client, foreign)


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_own_accounts_object_is_reachable(
    route: Route, owner_client: ApiClient, tenant: Tenant
) -> None:
    """The control: the same request on an object of the caller's own account succeeds, so the
    404 above is isolation and not a broken route."""
    own = MAKERS[route.kind](owner_client, tenant)
    response = owner_client.request(route.method, route.path.format(id=own.id), json=route.body)
    assert response.status_code == route.ok, response.text


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_admin_reaches_every_accounts_object(
    route: Route, admin_client: ApiClient, other_owner_client: ApiClient, other_tenant: Tenant
) -> None:
    foreign = MAKERS[route.kind](other_owner_client, other_tenant)
    response = admin_client.request(route.method, route.path.format(id=foreign.id), json=route.body)
    assert response.status_code == route.ok, response.text


def test_foreign_api_key_cannot_reach_this_account(
    client: ApiClient, other_api_key: dict[str, Any], tenant: Tenant
) -> None:
    headers = bearer(other_api_key["key"])
    assert_problem(client.get(f"{API}/users/{tenant.member.id}", headers=headers), 404)
    assert_problem(client.get(f"{API}/accounts/{tenant.account_id}", headers=headers), 404)
    users = expect(client.get(f"{API}/users", headers=headers, params={"limit": 200}), 200)
    assert tenant.account_id not in {user["account_id"] for user in users["items"]}
