"""The request id round trip: a valid ``X-Request-ID`` is echoed (header and problem document),
an invalid one is replaced, and a missing one is generated (32 hex characters)."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit

import pytest
from integration_support import GENERATED_REQUEST_ID, assert_problem

from qa.client import API, ApiClient
from qa.factories import expect
from qa.launcher import Backend

# Fixed ids for the values made at import: test ids must be the same in every process that
# collects them (pytest-xdist's workers compare their collections).
VALID = [
    "abc",
    "req-0001",
    "trace.id:span-42_x",
    pytest.param(str(uuid.uuid4()), id="uuid"),
    pytest.param(uuid.uuid4().hex, id="uuid-hex"),
    pytest.param("a" * 128, id="128-characters"),
]

INVALID = [
    "a" * 129,
    "a" * 300,
    "has spaces in it",
    "tab\tinside",
    "semi;colon",
    'quote"d',
    "<script>",
    "slash/ed",
    "",
]


@pytest.mark.parametrize("request_id", VALID)
def test_valid_request_id_is_echoed(client: ApiClient, request_id: str) -> None:
    response = client.get(f"{API}/users/me", headers={"X-Request-ID": request_id})
    body = assert_problem(response, 401)
    assert response.headers["x-request-id"] == request_id
    assert body["request_id"] == request_id


def test_valid_request_id_is_echoed_on_success(owner_client: ApiClient) -> None:
    request_id = f"ok-{uuid.uuid4().hex}"
    response = owner_client.get(f"{API}/users/me", headers={"X-Request-ID": request_id})
    expect(response, 200)
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize("request_id", INVALID, ids=lambda value: repr(value[:20]))
def test_invalid_request_id_is_replaced(client: ApiClient, request_id: str) -> None:
    response = client.get(f"{API}/users/me", headers={"X-Request-ID": request_id})
    body = assert_problem(response, 401)
    generated = response.headers["x-request-id"]
    assert generated != request_id
    assert GENERATED_REQUEST_ID.match(generated), generated
    assert body["request_id"] == generated


def test_missing_request_id_is_generated_fresh_each_time(client: ApiClient) -> None:
    seen = set()
    for _ in range(3):
        response = client.get(f"{API}/users/me")
        body = assert_problem(response, 401)
        generated = response.headers["x-request-id"]
        assert GENERATED_REQUEST_ID.match(generated), generated
        assert body["request_id"] == generated
        seen.add(generated)
    assert len(seen) == 3


def test_request_id_on_unrouted_and_health_responses(client: ApiClient) -> None:
    for path in ("/health/live", "/health/ready", "/no/such/path"):
        response = client.get(path, headers={"X-Request-ID": "probe-1"})
        assert response.headers["x-request-id"] == "probe-1", path


def test_only_one_request_id_header_is_returned(client: ApiClient) -> None:
    response = client.get(f"{API}/users/me", headers={"X-Request-ID": "single"})
    assert response.headers.get_list("x-request-id") == ["single"]


def test_non_ascii_request_id_is_replaced(client: ApiClient) -> None:
    response = client.get(f"{API}/users/me", headers={"X-Request-ID": "café-☕".encode()})
    body = assert_problem(response, 401)
    assert GENERATED_REQUEST_ID.match(response.headers["x-request-id"])
    assert body["request_id"] == response.headers["x-request-id"]


def test_first_of_repeated_request_ids_is_used(client: ApiClient) -> None:
    response = client.get(
        f"{API}/users/me", headers=[("X-Request-ID", "first-id"), ("X-Request-ID", "second-id")]
    )
    body = assert_problem(response, 401)
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["request_id"] in {"first-id", "second-id"}


def _raw_exchange(backend: Backend, request: bytes) -> bytes:
    parts = urlsplit(backend.base_url)
    if parts.scheme != "http":
        pytest.skip(f"raw HTTP/1.1 needs a plain http:// backend, not {parts.scheme}://")
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize(
    "value",
    [b"abc\ndef-injected", b"abc\r\n def-injected", b"abc\x00def-injected"],
    ids=["newline", "folded line", "NUL"],
)
def test_request_id_with_control_characters_never_reaches_the_app(
    backend: Backend, value: bytes
) -> None:
    """Newlines cannot smuggle a fake log line or header: the HTTP parser refuses them."""
    request = (
        b"GET /api/v1/users/me HTTP/1.1\r\nHost: renum\r\nX-Request-ID: "
        + value
        + b"\r\nConnection: close\r\n\r\n"
    )
    head = _raw_exchange(backend, request).split(b"\r\n\r\n", 1)[0]
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, head
    assert b"def-injected" not in head
