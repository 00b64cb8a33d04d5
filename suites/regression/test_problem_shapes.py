"""The problem documents clients see for each error status, from a launched backend.

Request ids and UUIDs are replaced by placeholders; everything else (type URIs, titles,
details, field errors, media type) is part of the snapshot.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pytest_regressions.data_regression import DataRegressionFixture

from qa.client import API, ApiClient
from qa.factories import Tenant

pytestmark = pytest.mark.usefixtures("clean_environment")
Snapshot = Callable[[httpx.Response], None]

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def normalise(value: Any) -> Any:
    """Replace what changes from run to run (UUIDs) with placeholders, recursively."""
    if isinstance(value, str):
        return UUID.sub("<uuid>", value)
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


@pytest.fixture
def snapshot(data_regression: DataRegressionFixture, request: pytest.FixtureRequest) -> Snapshot:
    """``snapshot(response)``: one snapshot per test, shared by every database flavour (the
    problem documents must not depend on the database)."""

    def check(response: httpx.Response) -> None:
        data_regression.check(shape(response), basename=request.node.originalname)

    return check


def shape(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    body["request_id"] = "<request-id>"
    headers = {
        name: response.headers[name]
        for name in ("content-type", "www-authenticate", "allow")
        if name in response.headers
    }
    return {"status": response.status_code, "headers": headers, "body": normalise(body)}


@pytest.fixture
def anonymous(client: ApiClient) -> ApiClient:
    return client


def test_400_malformed_json(snapshot: Snapshot, anonymous: ApiClient) -> None:
    response = anonymous.post(
        f"{API}/auth/refresh",
        content=b'{"refresh_token": ',
        headers={"Content-Type": "application/json"},
    )
    snapshot(response)


def test_401_missing_credentials(snapshot: Snapshot, anonymous: ApiClient) -> None:
    snapshot(anonymous.get(f"{API}/users/me"))


def test_401_invalid_token(snapshot: Snapshot, anonymous: ApiClient) -> None:
    response = anonymous.get(f"{API}/users/me", headers={"Authorization": "Bearer not-a-token"})
    snapshot(response)


def test_401_wrong_password(snapshot: Snapshot, anonymous: ApiClient, tenant: Tenant) -> None:
    response = anonymous.post(
        f"{API}/auth/token", data={"username": tenant.member.email, "password": "wrong-password"}
    )
    snapshot(response)


def test_403_role_too_low(snapshot: Snapshot, owner_client: ApiClient) -> None:
    snapshot(owner_client.get(f"{API}/accounts"))


def test_404_unknown_id(snapshot: Snapshot, admin_client: ApiClient) -> None:
    snapshot(admin_client.get(f"{API}/users/{uuid.uuid4()}"))


def test_404_unknown_route(snapshot: Snapshot, anonymous: ApiClient) -> None:
    snapshot(anonymous.get(f"{API}/no-such-thing"))


def test_405_wrong_method(snapshot: Snapshot, anonymous: ApiClient) -> None:
    snapshot(anonymous.delete(f"{API}/auth/token"))


def test_409_duplicate(snapshot: Snapshot, owner_client: ApiClient, tenant: Tenant) -> None:
    response = owner_client.post(
        f"{API}/users", json={"email": tenant.member.email, "password": "a-long-passphrase"}
    )
    snapshot(response)


def test_413_body_too_large(snapshot: Snapshot, anonymous: ApiClient) -> None:
    response = anonymous.post(
        f"{API}/auth/refresh",
        content=b"{" + b" " * (1_048_576 + 1) + b"}",
        headers={"Content-Type": "application/json"},
    )
    snapshot(response)


def test_422_validation(snapshot: Snapshot, admin_client: ApiClient) -> None:
    response = admin_client.post(
        f"{API}/accounts",
        json={"name": "", "owner_email": "not-an-email", "owner_password": "short", "plan": "gold"},
    )
    snapshot(response)


def test_422_query(snapshot: Snapshot, admin_client: ApiClient) -> None:
    snapshot(admin_client.get(f"{API}/users", params={"limit": 0, "offset": -1}))


def test_422_path(snapshot: Snapshot, admin_client: ApiClient) -> None:
    snapshot(admin_client.get(f"{API}/users/not-a-uuid"))
