"""Roles as the routes declare them, over HTTP: ``/openapi.json`` states each authenticated
operation's role (``x-required-role``), and a caller below it gets the 403 problem, before
anything else about the request is looked at."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from integration_support import assert_problem

from qa.client import API, ApiClient
from qa.factories import expect

ROLES = ("viewer", "member", "owner", "admin")
PUBLIC = {"login", "refresh", "logout"}


def api_operations(client: ApiClient) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every API operation of the served schema by id: method, path and its spec."""
    schema = expect(client.anonymous().get("/openapi.json"), 200)
    return {
        spec["operationId"]: (method.upper(), path, spec)
        for path, item in schema["paths"].items()
        if path.startswith(f"{API}/")
        for method, spec in item.items()
    }


def needs(role: str) -> str:
    return f"This operation needs the {role} role or higher."


@pytest.mark.parametrize(
    ("caller", "method", "path", "role"),
    [
        ("viewer", "GET", f"{API}/users", "owner"),
        # A fixed id (no such user): test ids must be the same in every process (pytest-xdist).
        ("member", "DELETE", f"{API}/users/7d2c0e4a-5b1f-4c3e-9a6d-2f8e1b0c4d5a", "owner"),
        ("member", "POST", f"{API}/accounts", "admin"),
        ("viewer", "POST", f"{API}/teams", "member"),
    ],
)
def test_a_caller_below_the_declared_role_is_refused(
    viewer_client: ApiClient,
    member_client: ApiClient,
    caller: str,
    method: str,
    path: str,
    role: str,
) -> None:
    client = {"viewer": viewer_client, "member": member_client}[caller]
    body = assert_problem(client.request(method, path, json={}), 403)
    assert body["detail"] == needs(role)


def test_the_schema_states_the_role_of_every_authenticated_operation(client: ApiClient) -> None:
    operations = api_operations(client)
    assert operations.keys() >= PUBLIC
    for operation, (_, _, spec) in operations.items():
        if operation in PUBLIC:
            assert not spec.get("security"), operation
            assert "x-required-role" not in spec, operation
        else:
            assert spec.get("security"), operation
            assert spec.get("x-required-role") in ROLES, operation
            assert "403" in spec["responses"] or spec["x-required-role"] == "viewer", operation


def test_a_viewer_is_refused_every_operation_that_needs_more(
    client: ApiClient, viewer_client: ApiClient
) -> None:
    """Whatever the operation needs besides, a viewer gets the declared role's 403 (ids that
    exist nowhere and an empty body included: the role is checked first)."""
    refused = 0
    for method, path, spec in api_operations(client).values():
        role = spec.get("x-required-role")
        if role in (None, "viewer"):
            continue
        url = re.sub(r"\{\w+\}", lambda _: str(uuid.uuid4()), path)
        body = assert_problem(viewer_client.request(method, url, json={}), 403)
        assert body["detail"] == needs(role), f"{method} {path}"
        refused += 1
    assert refused >= 20
