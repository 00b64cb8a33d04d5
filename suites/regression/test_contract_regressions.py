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


# Rules only the server can judge, and the input limits -------------------------------------


def documented_rules(document: dict[str, Any], path: str, method: str) -> set[tuple[str, str]]:
    """The (pointer, type) rules the served schema documents on the operation's 422."""
    response = document["paths"][path][method]["responses"]["422"]
    return {(rule["pointer"], rule["type"]) for rule in response.get("x-server-rules", ())}


def assert_documented_refusal(
    document: dict[str, Any], path: str, method: str, response: httpx.Response
) -> None:
    """A 422 whose every error is a rule the schema documents on the operation (a rule covers
    the input it names and what is below it)."""
    assert response.status_code == 422, response.text
    rules = documented_rules(document, path, method)
    for error in response.json()["errors"]:
        assert any(
            error["type"] == kind and (error["pointer"] + "/").startswith(pointer + "/")
            for pointer, kind in rules
        ), f"{method.upper()} {path}: {error} is not documented in {sorted(rules)}"


def test_an_empty_usage_period_is_an_empty_result(
    owner_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST202: `GET /usage` with `from` equal to `to` answered 422 (`to` must be after `from`);
    the schema allows it, and the period is empty: nothing was used in it."""
    instant = "2030-01-01T00:00:00Z"
    response = owner_client.get(f"{API}/usage", params={"from": instant, "to": instant})
    assert response.status_code == 200
    assert response.json()["rows"] == []
    assert response.json()["total"]["calls"] == 0
    # A period that ends before it starts is still refused, as the schema documents.
    backwards = owner_client.get(
        f"{API}/usage", params={"from": instant, "to": "2029-12-31T23:59:59Z"}
    )
    assert_documented_refusal(served_schema, f"{API}/usage", "get", backwards)


def test_an_unknown_provider_key_is_a_documented_422(
    owner_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST202: an agent naming a provider key that does not exist is schema-valid; the 422 it
    gets is documented on the operation (a reference only the server can check)."""
    body = {
        "name": unique_name("agent"),
        "provider": "openai",
        "model": "gpt-4o",
        "provider_key_id": str(uuid.uuid4()),
    }
    schema = request_schema(served_schema, f"{API}/agents", "post", "application/json")
    assert schema_accepts(served_schema, schema, body)
    response = owner_client.post(f"{API}/agents", json=body)
    assert_documented_refusal(served_schema, f"{API}/agents", "post", response)
    assert ("/body/provider_key_id", "not_found") in documented_rules(
        served_schema, f"{API}/agents", "post"
    )


def test_an_expiry_in_the_past_is_a_documented_422(
    owner_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST202: an API key expiring in the past is schema-valid (a schema cannot read the
    clock); the 422 it gets is documented on the operation."""
    body = {"name": "ci-pipeline", "expires_at": "2000-01-01T00:00:00Z"}
    schema = request_schema(served_schema, f"{API}/api-keys", "post", "application/json")
    assert schema_accepts(served_schema, schema, body)
    response = owner_client.post(f"{API}/api-keys", json=body)
    assert_documented_refusal(served_schema, f"{API}/api-keys", "post", response)
    assert response.json()["errors"][0]["type"] == "past_datetime"


def test_a_team_of_an_unknown_agent_is_a_documented_422(
    owner_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST202: a team naming an agent that does not exist (as a member, or in its workflow) is
    schema-valid; the 422 it gets is documented on the operation."""
    unknown = str(uuid.uuid4())
    for body in (
        {"name": unique_name("team"), "agent_ids": [unknown]},
        {
            "name": unique_name("team"),
            "workflow": {"strategy": "sequential", "steps": [{"id": "a", "agent_id": unknown}]},
        },
    ):
        schema = request_schema(served_schema, f"{API}/teams", "post", "application/json")
        assert schema_accepts(served_schema, schema, body)
        response = owner_client.post(f"{API}/teams", json=body)
        assert_documented_refusal(served_schema, f"{API}/teams", "post", response)


def test_users_refused_by_the_server_are_documented(
    admin_client: ApiClient, owner_client: ApiClient, served_schema: dict[str, Any]
) -> None:
    """ST202: a new user the schema allows was refused: by an admin without `account_id`, and
    a password change whose current password is wrong or whose new one is the same. The
    schema says what it can (password lengths) and documents the rest on the operations."""
    body = {"email": f"ada-{uuid.uuid4().hex[:6]}@acme.example", "password": DEFAULT_PASSWORD}
    response = admin_client.post(f"{API}/users", json=body)
    assert_documented_refusal(served_schema, f"{API}/users", "post", response)

    path = f"{API}/users/me/password"
    if path not in served_schema["paths"]:
        pytest.skip("this backend has no password change")
    schema = request_schema(served_schema, path, "post", "application/json")
    for change in (
        {"current_password": "not-the-password", "new_password": "a-new-passphrase"},
        {"current_password": DEFAULT_PASSWORD, "new_password": DEFAULT_PASSWORD},
    ):
        assert schema_accepts(served_schema, schema, change)
        refused = owner_client.post(path, json=change)
        assert_documented_refusal(served_schema, path, "post", refused)
    password = served_schema["components"]["schemas"]["UserCreate"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (8, 256)


@pytest.mark.parametrize(
    "instant", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"], ids=["max", "min"]
)
def test_instants_that_overflow_in_utc_are_documented_422s(
    owner_client: ApiClient, served_schema: dict[str, Any], instant: str
) -> None:
    """A `format: date-time` value that overflows once converted to UTC answered 500; it is a
    422 now, documented on every operation with a date-time input."""
    body = {"name": unique_name("key"), "expires_at": instant}
    schema = request_schema(served_schema, f"{API}/api-keys", "post", "application/json")
    assert schema_accepts(served_schema, schema, body)
    response = owner_client.post(f"{API}/api-keys", json=body)
    assert_documented_refusal(served_schema, f"{API}/api-keys", "post", response)
    for name in ("from", "to"):
        response = owner_client.get(f"{API}/usage", params={name: instant})
        assert_documented_refusal(served_schema, f"{API}/usage", "get", response)


NUL, NON_FINITE = "nul_character", "non_finite_number"


@pytest.mark.parametrize(
    ("raw", "pointer", "kind"),
    [
        ('{"prompt": "a\\u0000b"}', "/body/prompt", NUL),
        ('{"prompt": "x", "variables": {"k\\u0000": 1}}', "/body/variables/k\u0000", NUL),
        ('{"prompt": "x", "variables": {"n": NaN}}', "/body/variables/n", NON_FINITE),
        (
            '{"prompt": "x", "budget": {"max_seconds": Infinity}}',
            "/body/budget/max_seconds",
            NON_FINITE,
        ),
        ('{"prompt": "x", "variables": {"n": 1e999}}', "/body/variables/n", NON_FINITE),
    ],
    ids=["nul", "nul-key", "nan", "infinity", "1e999"],
)
def test_nul_characters_and_non_finite_numbers_are_422_on_every_database(
    owner_client: ApiClient, raw: str, pointer: str, kind: str
) -> None:
    """ST101 on PostgreSQL (a NUL cannot be stored: 500), silently stored (or nulled) on
    SQLite: Schemathesis's NUL characters and the non-finite numbers the harness adds are
    refused before anything is stored, with a pointer to the value."""
    team = expect(owner_client.post(f"{API}/teams", json={"name": unique_name("team")}), 201)
    response = owner_client.post(
        f"{API}/teams/{team['id']}/executions",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert [(e["pointer"], e["type"]) for e in response.json()["errors"]] == [(pointer, kind)]
    listed = owner_client.get(f"{API}/executions", params={"team_id": team["id"]})
    assert listed.json()["total"] == 0


def test_every_operation_with_input_documents_a_422(served_schema: dict[str, Any]) -> None:
    """A NUL in any parameter or body is refused (422) by any operation that takes input:
    each one says so, and each one with a JSON body documents the 400 of a malformed one.
    `If-None-Match` (a conditional read's) is compared, never refused: it takes no 422."""
    for path, item in served_schema["paths"].items():
        for method, operation in item.items():
            inputs = [
                p for p in operation.get("parameters", []) if p.get("name") != "If-None-Match"
            ]
            if inputs or operation.get("requestBody"):
                assert "422" in operation["responses"], f"{method.upper()} {path}"
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                assert "400" in operation["responses"], f"{method.upper()} {path}"
