"""Every defect the contract tests (``contracts/``, Schemathesis) found in the backend, replayed
on every run: the request that exposed it, what the server must answer now, and, where the
defect was a disagreement between the server and its schema, what the served schema says about
that same request (both must agree).

Each case names the Schemathesis check that caught it (ST101 server error, ST201 schema-violating
request accepted, ST202 schema-valid request rejected, ST204 wrong answer to an undeclared
method, ST205 Allow header mismatch).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import jsonschema_rs  # the JSON Schema validator Schemathesis itself uses
import pytest

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, Tenant, expect, unique_email, unique_name
from qa.launcher import Backend


@pytest.fixture(scope="module")
def served_schema(backend: Backend) -> dict[str, Any]:
    return expect(httpx.get(f"{backend.base_url}/openapi.json", timeout=30), 200)


def schema_accepts(document: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` is valid against ``schema``, a part of the served ``document``."""
    validator = jsonschema_rs.validator_for(
        {**schema, "components": document["components"]}, validate_formats=True
    )
    return validator.is_valid(value)


def request_schema(document: dict[str, Any], path: str, method: str, media: str) -> Any:
    return document["paths"][path][method]["requestBody"]["content"][media]["schema"]


def parameter_schema(document: dict[str, Any], path: str, method: str, name: str) -> Any:
    for parameter in document["paths"][path][method]["parameters"]:
        if parameter["name"] == name:
            return parameter["schema"]
    raise AssertionError(f"{method.upper()} {path} has no parameter {name!r}")


def allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers.get("allow", "").split(",") if method}


def test_405_lists_every_method_of_the_path(admin_client: ApiClient) -> None:
    """ST205: `OPTIONS /api/v1/users` answered `Allow: GET`, though the path serves POST too
    (Starlette names only the first route that matched the path)."""
    response = admin_client.options(f"{API}/users")
    assert response.status_code == 405
    assert allowed(response) == {"GET", "POST"}
    response = admin_client.request("PUT", f"{API}/users/{uuid.uuid4()}")
    assert response.status_code == 405
    assert allowed(response) == {"GET", "PATCH", "DELETE"}


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_undeclared_methods_on_users_me_are_405(admin_client: ApiClient, method: str) -> None:
    """ST204: `PATCH /api/v1/users/me` fell into `/users/{user_id}` and answered 422."""
    response = admin_client.request(method, f"{API}/users/me", json={})
    assert response.status_code == 405
    assert allowed(response) == {"GET"}
    # A malformed id still gets the 422 that points at it.
    assert admin_client.request(method, f"{API}/users/not-a-uuid", json={}).status_code == 422


def test_length_limits_hold_for_the_text_as_sent(
    admin_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST201: a 121-character account name starting with U+0085 (which Python's strip()
    removes) was accepted, though the schema allows 120."""
    body = {
        "name": "\x85" + "A" * 120,
        "owner_email": unique_email("owner"),
        "owner_password": DEFAULT_PASSWORD,
    }
    schema = request_schema(served_schema, f"{API}/accounts", "post", "application/json")
    assert not schema_accepts(served_schema, schema, body)
    assert admin_client.post(f"{API}/accounts", json=body).status_code == 422


def test_a_password_is_kept_as_sent(admin_client: ApiClient, client: ApiClient) -> None:
    """Found by the stateful links (create user, then log in): a password with surrounding
    spaces was stored stripped, so its owner could not log in with it."""
    email, password = unique_email("padded"), "  padded passphrase  "
    expect(
        admin_client.post(
            f"{API}/accounts",
            json={"name": unique_name(), "owner_email": email, "owner_password": password},
        ),
        201,
    )
    login = client.post(f"{API}/auth/token", data={"username": email, "password": password})
    assert login.status_code == 200
    stripped = client.post(
        f"{API}/auth/token", data={"username": email, "password": password.strip()}
    )
    assert stripped.status_code == 401


def test_addresses_on_test_domains_are_accepted(admin_client: ApiClient) -> None:
    """ST202: `format: email` promised `x@host.test`, the server refused it as a special-use
    domain (the bootstrap admin itself is admin@renum.test)."""
    body = {
        "name": unique_name(),
        "owner_email": f"&|m7g0-{uuid.uuid4().hex[:6]}@4.test",
        "owner_password": DEFAULT_PASSWORD,
    }
    assert admin_client.post(f"{API}/accounts", json=body).status_code == 201


def test_the_login_form_is_checked_as_described(
    client: ApiClient, tenant: Tenant, served_schema: dict[str, Any]
) -> None:
    """ST201/ST202: an empty `grant_type` was accepted against the documented `^password$`,
    and an empty `username` refused though the schema allowed it. The form now says what the
    server does: an empty field counts as a missing one."""
    path, media = f"{API}/auth/token", "application/x-www-form-urlencoded"
    schema = request_schema(served_schema, path, "post", media)
    member = tenant.member
    with_empty_grant = {"username": member.email, "password": member.password, "grant_type": ""}
    assert schema_accepts(served_schema, schema, with_empty_grant)
    assert client.post(path, data=with_empty_grant).status_code == 200
    empty_username = {"username": "", "password": member.password}
    assert not schema_accepts(served_schema, schema, empty_username)
    assert client.post(path, data=empty_username).status_code == 422


@pytest.mark.parametrize("value", ["0.5", "1795600000", "2030-01-01"])
def test_date_times_are_date_times(
    owner_client: ApiClient, served_schema: dict[str, Any], value: str
) -> None:
    """ST201: `GET /api/v1/usage?to=0.5` was read as a Unix timestamp and answered 200."""
    schema = parameter_schema(served_schema, f"{API}/usage", "get", "to")
    assert not schema_accepts(served_schema, schema, value)
    assert owner_client.get(f"{API}/usage", params={"to": value}).status_code == 422
    assert owner_client.get(f"{API}/usage", params={"to": "2030-01-01T00:00:00Z"}).is_success


def test_money_is_a_decimal_string(served_schema: dict[str, Any]) -> None:
    """ST202: a budget's `max_cost_usd` was documented as any string; `""` answered 422. Its
    schema now carries the server's rule (a decimal string from 0 to 1000000, 8 places)."""
    budget = served_schema["components"]["schemas"]["Budget"]["properties"]["max_cost_usd"]
    for good in ("0.50", "1000000", "0.00000001"):
        assert schema_accepts(served_schema, budget, good)
    for bad in ("", "-1", "1000000.01", "0.000000001", 0.5):
        assert not schema_accepts(served_schema, budget, bad)


def test_last_event_id_is_never_null(served_schema: dict[str, Any]) -> None:
    """ST202: the `Last-Event-ID` header was documented as nullable; a `null` header answered
    422 (a header is absent or a value)."""
    path = f"{API}/executions/{{execution_id}}/events"
    schema = parameter_schema(served_schema, path, "get", "last-event-id")
    assert schema.get("type") == "integer"
    assert not schema_accepts(served_schema, schema, None)


def test_fields_that_cannot_be_null_are_not_documented_as_nullable(
    owner_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST202: `PATCH /api/v1/teams/{id}` documented `name` and `workflow` as nullable and
    answered 422 to `null`; the schema now says what the server does."""
    schema = request_schema(served_schema, f"{API}/teams/{{team_id}}", "patch", "application/json")
    team = expect(owner_client.post(f"{API}/teams", json={"name": unique_name("team")}), 201)
    # `workflow: null` too, once null became a 422 (a workflow is replaced, never removed).
    for field in ("name", "workflow"):
        assert not schema_accepts(served_schema, schema, {field: None})
        response = owner_client.patch(f"{API}/teams/{team['id']}", json={field: None})
        assert response.status_code == 422


def test_an_unknown_provider_key_is_a_422_not_a_500(owner_client: ApiClient) -> None:
    """ST101: an `openai` agent naming a provider key crashed with 500 on SQLite (the id
    reached the database as a string)."""
    body = {
        "name": unique_name("agent"),
        "provider": "openai",
        "model": "gpt-4o",
        "provider_key_id": str(uuid.uuid4()),
    }
    response = owner_client.post(f"{API}/agents", json=body)
    assert response.status_code == 422
    assert {e["pointer"] for e in response.json()["errors"]} == {"/body/provider_key_id"}


def test_a_guard_has_one_of_its_shapes(served_schema: dict[str, Any]) -> None:
    """ST202: with guards one flat model, `{}` and `{"path": "a"}` were schema-valid and
    refused with 422; the schema now states the three shapes (a condition, `all`, `any`)."""
    guard = {"$ref": "#/components/schemas/Guard"}
    condition = {"path": "review.score", "op": "gte", "value": 3}
    for good in (condition, {"all": [condition]}, {"any": [{"all": [condition]}]}):
        assert schema_accepts(served_schema, guard, good)
    for bad in (
        {},
        {"path": "a"},
        {"all": [condition], "any": [condition]},
        {**condition, "all": [condition]},
    ):
        assert not schema_accepts(served_schema, guard, bad)


def test_every_operation_with_a_body_documents_the_size_limit(
    served_schema: dict[str, Any],
) -> None:
    """ST103 (found by a --deep run): a prompt within its 200,000 characters exceeded the
    1 MiB body limit once JSON-escaped and got an undocumented 413."""
    for path, item in served_schema["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                assert "413" in operation["responses"], f"{method.upper()} {path}"


def test_a_body_over_the_limit_is_a_413_problem(owner_client: ApiClient) -> None:
    body = json.dumps({"prompt": "\u009f" * 200_000})  # within maxLength; 1.2 MB as JSON
    response = owner_client.post(
        f"{API}/teams/{uuid.uuid4()}/executions",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
