"""Every error is an RFC 9457 problem document (``application/problem+json``) with the request
id, and none carries a stack trace or SQL: 400, 401, 403, 404, 405, 409, 413, 422 and 500."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from integration_support import assert_no_leak, assert_problem, log_events, pointers

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, Tenant, expect, unique_email, unique_name
from qa.launcher import LaunchedBackend

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Case:
    status: int
    caller: str  # "anonymous", "admin", "owner", "member" or "viewer"
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


CASES = {
    "400 malformed JSON": Case(
        400, "admin", "POST", f"{API}/accounts", {"content": b'{"name": "x",', "headers": JSON}
    ),
    "400 JSON with a trailing comma": Case(
        400, "owner", "POST", f"{API}/users", {"content": b'{"email": "a@b.c",}', "headers": JSON}
    ),
    "401 no credentials": Case(401, "anonymous", "GET", f"{API}/users/me"),
    "401 bad credentials on a write": Case(
        401, "anonymous", "POST", f"{API}/api-keys", {"json": {"name": "x"}}
    ),
    "403 member lists users": Case(403, "member", "GET", f"{API}/users"),
    "403 viewer creates a key": Case(
        403, "viewer", "POST", f"{API}/api-keys", {"json": {"name": "x"}}
    ),
    "403 owner lists accounts": Case(403, "owner", "GET", f"{API}/accounts"),
    "404 unknown route": Case(404, "anonymous", "GET", f"{API}/does-not-exist"),
    "404 unknown route outside the API": Case(404, "anonymous", "GET", "/no/such/page"),
    "404 unknown route with credentials": Case(404, "owner", "POST", f"{API}/nothing-here"),
    "404 unknown id": Case(404, "owner", "GET", f"{API}/users/{uuid.uuid4()}"),
    "405 wrong method on a collection": Case(405, "admin", "DELETE", f"{API}/accounts"),
    "405 wrong method on /users/me": Case(405, "owner", "PUT", f"{API}/users/me"),
    "405 GET on the login endpoint": Case(405, "anonymous", "GET", f"{API}/auth/token"),
    "422 wrong types": Case(
        422,
        "admin",
        "POST",
        f"{API}/accounts",
        {"json": {"name": ["x"], "owner_email": 5, "owner_password": True}},
    ),
    "422 body is a list": Case(422, "admin", "POST", f"{API}/accounts", {"json": [1, 2]}),
    "422 query out of bounds": Case(422, "owner", "GET", f"{API}/users", {"params": {"limit": 0}}),
}


@pytest.fixture
def callers(
    client: ApiClient,
    admin_client: ApiClient,
    owner_client: ApiClient,
    member_client: ApiClient,
    viewer_client: ApiClient,
) -> dict[str, ApiClient]:
    return {
        "anonymous": client,
        "admin": admin_client,
        "owner": owner_client,
        "member": member_client,
        "viewer": viewer_client,
    }


@pytest.mark.parametrize("name", CASES)
def test_errors_are_problem_documents(callers: dict[str, ApiClient], name: str) -> None:
    case = CASES[name]
    response = callers[case.caller].request(case.method, case.path, **case.kwargs)
    body = assert_problem(response, case.status)
    assert body["type"].startswith(("https://", "about:blank"))
    if case.status == 422:
        assert body["errors"], "a 422 lists the bad fields"


def test_405_names_all_the_allowed_methods(admin_client: ApiClient) -> None:
    """RFC 9110 section 15.5.6: a 405 carries ``Allow`` with the resource's methods (all of
    them, not only those of the first route that matched the path)."""
    response = admin_client.delete(f"{API}/accounts")
    assert_problem(response, 405)
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["allow"].split(",")}


@pytest.mark.both_databases  # an integrity error
def test_409_is_a_problem_document(owner_client: ApiClient, tenant: Tenant) -> None:
    body = assert_problem(
        owner_client.post(
            f"{API}/users", json={"email": tenant.viewer.email, "password": DEFAULT_PASSWORD}
        ),
        409,
    )
    assert body["type"].endswith("conflict")


def test_malformed_json_changes_nothing(admin_client: ApiClient) -> None:
    name = unique_name()
    owner = unique_email()
    broken = f'{{"name": "{name}", "owner_email": "{owner}", "owner_password": "{DEFAULT_PASSWORD}"'
    body = assert_problem(
        admin_client.post(f"{API}/accounts", content=broken.encode(), headers=JSON), 400
    )
    assert DEFAULT_PASSWORD not in str(body)
    # The account was not created: the same, well-formed, request now succeeds.
    expect(
        admin_client.post(
            f"{API}/accounts",
            json={"name": name, "owner_email": owner, "owner_password": DEFAULT_PASSWORD},
        ),
        201,
    )


def test_422_lists_every_bad_field_with_a_json_pointer(admin_client: ApiClient) -> None:
    body = assert_problem(
        admin_client.post(
            f"{API}/accounts",
            json={
                "name": 12,
                "owner_email": "not-an-email",
                "owner_password": ["list"],
                "unexpected": True,
                "also_unexpected": None,
            },
        ),
        422,
    )
    by_pointer = {error["pointer"]: error for error in body["errors"]}
    assert set(by_pointer) == {
        "/body/name",
        "/body/owner_email",
        "/body/owner_password",
        "/body/unexpected",
        "/body/also_unexpected",
    }
    assert by_pointer["/body/unexpected"]["type"] == "extra_forbidden"
    assert all(error["location"] == "body" for error in body["errors"])
    assert all(error["message"] for error in body["errors"])
    assert "5" in body["detail"]  # "5 fields failed validation."


def test_422_does_not_echo_the_submitted_values(owner_client: ApiClient) -> None:
    secret = "s3cr3t"  # too short: refused, and must not be echoed back
    response = owner_client.post(f"{API}/users", json={"email": unique_email(), "password": secret})
    body = assert_problem(response, 422)
    assert pointers(body) == {"/body/password"}
    assert secret not in response.text


def test_422_on_query_and_path(owner_client: ApiClient) -> None:
    body = assert_problem(
        owner_client.get(f"{API}/users", params={"limit": "many", "offset": -5}), 422
    )
    assert pointers(body) == {"/query/limit", "/query/offset"}
    assert {error["location"] for error in body["errors"]} == {"query"}
    body = assert_problem(owner_client.get(f"{API}/users/12345"), 422)
    assert pointers(body) == {"/path/user_id"}


# ------------------------------------------------------- a private server: 413 and 500

LIMIT = 2048


@pytest.fixture(scope="module")
def private_server() -> Iterator[LaunchedBackend]:
    """One private SQLite server for this module, with a 2 KiB body limit."""
    server = LaunchedBackend.start("sqlite", extra_env={"RENUM_MAX_BODY_BYTES": str(LIMIT)})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_admin(private_server: LaunchedBackend) -> Iterator[ApiClient]:
    with ApiClient(private_server.base_url) as admin:
        yield admin.login(private_server.admin_email, private_server.admin_password)


def _oversized_account(size: int) -> bytes:
    return (
        b'{"name": "big", "owner_email": "big@example.com", "owner_password": "'
        + b"x" * size
        + b'"}'
    )


def _chunks(data: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_413_with_content_length(private_admin: ApiClient) -> None:
    body = _oversized_account(LIMIT * 4)
    response = private_admin.post(f"{API}/accounts", content=body, headers=JSON)
    problem = assert_problem(response, 413)
    assert str(LIMIT) in problem["detail"]
    # A body just under the limit is read and judged on its content.
    fits = private_admin.post(
        f"{API}/accounts", content=_oversized_account(LIMIT - 200), headers=JSON
    )
    assert fits.status_code == 422, fits.text
    # Nothing was created by the refused request.
    names = {a["name"] for a in expect(private_admin.get(f"{API}/accounts"), 200)["items"]}
    assert "big" not in names


def test_413_with_a_chunked_body(private_admin: ApiClient) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    body = _oversized_account(LIMIT * 4)
    request = private_admin.build_request(
        "POST", f"{API}/accounts", content=_chunks(body), headers=JSON
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    problem = assert_problem(private_admin.send(request), 413)
    assert str(LIMIT) in problem["detail"]


def test_413_with_a_chunked_login_form(private_server: LaunchedBackend) -> None:
    form = b"username=a%40b.c&password=" + b"p" * (LIMIT * 4)
    with httpx.Client(base_url=private_server.base_url) as plain:
        response = plain.post(
            f"{API}/auth/token",
            content=_chunks(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert_problem(response, 413)
    log_events(private_server, response.headers["x-request-id"])
    assert "p" * 64 not in private_server.log_text()


def test_413_default_limit_is_one_mebibyte(admin_client: ApiClient) -> None:
    too_big = _oversized_account(1024 * 1024 + 1)
    assert_problem(admin_client.post(f"{API}/accounts", content=too_big, headers=JSON), 413)


def test_500_is_a_problem_document_without_internals(
    private_server: LaunchedBackend, private_admin: ApiClient
) -> None:
    """Break the database under the private server: the failure answers as a plain problem
    document that names the request id, while the log keeps the details."""
    database = private_server.env["RENUM_DATABASE__URL"].removeprefix("sqlite+aiosqlite:///")
    expect(private_admin.get(f"{API}/api-keys"), 200)
    request_id = f"boom-{uuid.uuid4().hex}"
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE api_keys RENAME TO api_keys_gone")
    try:
        response = private_admin.get(f"{API}/api-keys", headers={"X-Request-ID": request_id})
    finally:
        with sqlite3.connect(database) as db:
            db.execute("ALTER TABLE api_keys_gone RENAME TO api_keys")
    body = assert_problem(response, 500)
    assert body["request_id"] == request_id
    assert "api_keys" not in response.text
    assert "no such table" not in response.text
    assert_no_leak(response.text)
    events = [
        e for e in log_events(private_server, request_id) if e.get("request_id") == request_id
    ]
    assert {e["event"] for e in events} >= {"unhandled_error", "request"}
    # The server recovers once the database does.
    expect(private_admin.get(f"{API}/api-keys"), 200)
