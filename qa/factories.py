"""Test data made through the API, so every object is real and belongs to a real account."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from qa.client import API, ApiClient

DEFAULT_PASSWORD = "correct-horse-battery"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def unique_name(prefix: str = "Account") -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def unique(prefix: str) -> str:
    """``prefix-`` and eight random hex digits: an object name no other test uses (names are
    unique per account, and session fixtures share accounts between tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Member:
    """A user of a tenant, with the password the harness gave it."""

    id: str
    email: str
    password: str
    role: str


@dataclass(frozen=True)
class Tenant:
    account_id: str
    name: str
    owner: Member
    member: Member
    viewer: Member


def expect(response: Any, status: int) -> Any:
    """Return the JSON body if the status is as expected, else fail with the response."""
    if response.status_code != status:
        raise AssertionError(
            f"{response.request.method} {response.request.url.path}: expected {status}, "
            f"got {response.status_code}: {response.text}"
        )
    return response.json() if response.content else None


def create_user(owner: ApiClient, role: str, **fields: Any) -> Member:
    email = fields.pop("email", unique_email(role))
    body = {"email": email, "password": DEFAULT_PASSWORD, "role": role, **fields}
    created = expect(owner.post(f"{API}/users", json=body), 201)
    return Member(id=created["id"], email=email, password=DEFAULT_PASSWORD, role=role)


def create_agent(client: ApiClient, name: str = "agent", **fields: Any) -> dict[str, Any]:
    """An agent of the caller's account, named ``unique(name)``: the builtin ``echo`` model
    unless ``fields`` say otherwise (any field of the request, e.g. ``provider="openai"``,
    ``model="template"``, ``parameters={...}``). Returns the created agent."""
    body = {"name": unique(name), "provider": "builtin", "model": "echo", **fields}
    created: dict[str, Any] = expect(client.post(f"{API}/agents", json=body), 201)
    return created


def create_tenant(admin: ApiClient, name: str | None = None) -> Tenant:
    """An account with an owner, a member and a viewer."""
    name = name or unique_name()
    owner_email = unique_email("owner")
    account = expect(
        admin.post(
            f"{API}/accounts",
            json={"name": name, "owner_email": owner_email, "owner_password": DEFAULT_PASSWORD},
        ),
        201,
    )
    owner_client = ApiClient(str(admin.base_url)).login(owner_email, DEFAULT_PASSWORD)
    try:
        me = expect(owner_client.get(f"{API}/users/me"), 200)
        owner = Member(id=me["id"], email=owner_email, password=DEFAULT_PASSWORD, role="owner")
        member = create_user(owner_client, "member")
        viewer = create_user(owner_client, "viewer")
    finally:
        owner_client.close()
    return Tenant(account["id"], name, owner, member, viewer)


def tenant_with_owner(
    base_url: str, admin_email: str, admin_password: str
) -> tuple[Tenant, ApiClient]:
    """A new tenant on the backend at ``base_url``, made by its admin, and a client logged in
    as its owner (the caller closes it)."""
    with ApiClient(base_url) as admin:
        admin.login(admin_email, admin_password)
        tenant = create_tenant(admin)
    return tenant, ApiClient(base_url).login(tenant.owner.email, tenant.owner.password)
