"""Intrusion detection and throttling over HTTP, each attack simulated on loopback against a
launched backend with low thresholds: brute force (429, ``Retry-After`` growing, the user still
logs in from where they did before), credential stuffing, a distributed attack from many
sources (``X-Forwarded-For`` from the test's own address, configured as a trusted proxy), user
enumeration, a flood of invalid tokens, probing of ids, the rate limit of an API key with its
``RateLimit`` headers, one limit enforced by two API processes sharing Redis, and the events
on ``/metrics``. Assertions are on statuses, counts and orders, never on wall time."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from qa import services
from qa.client import API, ApiClient
from qa.factories import Member, Tenant, create_tenant, create_user, expect, unique_email
from qa.launcher import LaunchedBackend

TOKEN = f"{API}/auth/token"
PASSWORD = "Wrong-password-1"
THROTTLE = "RENUM_SECURITY__THROTTLE__"
LOW = {
    f"{THROTTLE}TRUSTED_PROXIES": "127.0.0.1,::1",
    f"{THROTTLE}BLOCK_SECONDS": "1",
    f"{THROTTLE}BRUTE_FORCE__THRESHOLD": "3",
    f"{THROTTLE}BRUTE_FORCE__WINDOW_SECONDS": "3600",
    f"{THROTTLE}STUFFING__THRESHOLD": "4",
    f"{THROTTLE}STUFFING__WINDOW_SECONDS": "3600",
    f"{THROTTLE}ENUMERATION__THRESHOLD": "4",
    f"{THROTTLE}ENUMERATION__WINDOW_SECONDS": "3600",
    f"{THROTTLE}DISTRIBUTED__THRESHOLD": "4",
    f"{THROTTLE}DISTRIBUTED__WINDOW_SECONDS": "3600",
    f"{THROTTLE}BAD_TOKENS__THRESHOLD": "5",
    f"{THROTTLE}BAD_TOKENS__WINDOW_SECONDS": "3600",
    f"{THROTTLE}ID_PROBING__THRESHOLD": "5",
    f"{THROTTLE}ID_PROBING__WINDOW_SECONDS": "3600",
    f"{THROTTLE}LIMITS__API_KEY__PER_SECOND": "0.01",
    f"{THROTTLE}LIMITS__API_KEY__BURST": "5",
}


def _source() -> str:
    """A fresh address for a simulated client (never contacted: only named in a header)."""
    value = uuid.uuid4().int
    return f"10.{value % 250}.{(value >> 8) % 250}.{(value >> 16) % 250 + 1}"


def _login(client: ApiClient, email: str, password: str, source: str | None) -> httpx.Response:
    headers = {"X-Forwarded-For": source} if source else {}
    return client.post(TOKEN, data={"username": email, "password": password}, headers=headers)


@pytest.fixture(scope="module")
def server() -> Iterator[LaunchedBackend]:
    launched = LaunchedBackend.start("sqlite", extra_env=LOW)
    try:
        yield launched
    finally:
        launched.stop()


@pytest.fixture(scope="module")
def tenant(server: LaunchedBackend) -> Tenant:
    with ApiClient(server.base_url) as admin:
        admin.login(server.admin_email, server.admin_password)
        return create_tenant(admin)  # its users logged in once from 127.0.0.1: a known context


@pytest.fixture
def client(server: LaunchedBackend) -> Iterator[ApiClient]:
    with ApiClient(server.base_url) as anonymous:
        yield anonymous


@contextlib.contextmanager
def _logged_in(base_url: str, member: Member) -> Iterator[ApiClient]:
    with ApiClient(base_url) as logged_in:
        yield logged_in.login(member.email, member.password)


def _wait_until_allowed(client: ApiClient, email: str, source: str) -> httpx.Response:
    """Log in (wrongly) until the throttling has ended: the first answer that is not 429."""
    for _ in range(200):
        response = _login(client, email, PASSWORD, source)
        if response.status_code != 429:
            return response
        time.sleep(min(float(response.headers["Retry-After"]), 0.5))
    raise AssertionError("still throttled")


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_brute_force_is_throttled_with_growing_delays_and_the_user_keeps_access(
    client: ApiClient, tenant: Tenant
) -> None:
    attacker, home = _source(), _source()
    user = tenant.member
    assert _login(client, user.email, user.password, home).status_code == 200  # a known context
    statuses = [_login(client, user.email, PASSWORD, attacker).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    first = _login(client, user.email, PASSWORD, attacker)
    assert first.status_code == 429
    assert first.headers["content-type"].startswith("application/problem+json")
    # Even the right password is refused to the attacker's pair while it is throttled.
    assert _login(client, user.email, user.password, attacker).status_code == 429
    # The user, from where they logged in before, keeps access.
    assert _login(client, user.email, user.password, home).status_code == 200

    # Once it ends, the next failure (the window's count still over the threshold) throttles
    # again for twice as long.
    assert _wait_until_allowed(client, user.email, attacker).status_code == 401
    second = _login(client, user.email, PASSWORD, attacker)
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) > int(first.headers["Retry-After"])


def test_credential_stuffing_throttles_the_source(client: ApiClient, tenant: Tenant) -> None:
    source = _source()
    # Four accounts (existing or not), one wrong password each, from one source.
    emails = [tenant.owner.email, tenant.member.email, tenant.viewer.email, unique_email()]
    assert [_login(client, e, PASSWORD, source).status_code for e in emails] == [401] * 4
    refused = _login(client, unique_email(), PASSWORD, source)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    # Another source is not concerned.
    assert _login(client, unique_email(), PASSWORD, _source()).status_code == 401


def test_user_enumeration_throttles_the_source(client: ApiClient) -> None:
    source = _source()
    tried = [_login(client, unique_email(), PASSWORD, source).status_code for _ in range(4)]
    assert tried == [401] * 4
    assert _login(client, unique_email(), PASSWORD, source).status_code == 429


def test_distributed_attack_throttles_unknown_contexts_only(
    client: ApiClient, tenant: Tenant
) -> None:
    with _logged_in(str(client.base_url), tenant.owner) as owner:
        victim = create_user(owner, "member")  # no failure yet, from anywhere
    home = _source()
    assert _login(client, victim.email, victim.password, home).status_code == 200  # known here
    # One wrong password each from four addresses (under every per-source threshold).
    attackers = [_source() for _ in range(4)]
    assert [_login(client, victim.email, PASSWORD, a).status_code for a in attackers] == [401] * 4
    # A fifth address, even with the right password, is throttled...
    refused = _login(client, victim.email, victim.password, _source())
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    # ... while the user, from their known context, logs in.
    assert _login(client, victim.email, victim.password, home).status_code == 200
    # The trusted proxy's own address (a request without the header) is never throttled: it
    # stands for everyone behind it.
    assert _login(client, victim.email, victim.password, None).status_code == 200


def test_ended_credentials_are_not_counted_as_guesses(
    server: LaunchedBackend, tenant: Tenant
) -> None:
    source = {"X-Forwarded-For": _source()}
    with _logged_in(server.base_url, tenant.owner) as owner:
        key = owner.post(f"{API}/api-keys", json={"name": "revoked"}).json()
        assert owner.delete(f"{API}/api-keys/{key['id']}").status_code == 204
    with ApiClient(server.base_url) as stale:
        stale.use_credential(key["key"])
        statuses = [stale.get(f"{API}/users/me", headers=source).status_code for _ in range(8)]
    assert statuses == [401] * 8  # a revoked key of ours: a client to update, not an attack


def test_websocket_authentication_failures_are_counted_and_refused(
    server: LaunchedBackend, tenant: Tenant
) -> None:
    source = _source()
    url = server.base_url.replace("http://", "ws://") + f"{API}/executions/{uuid.uuid4()}/ws"

    def close_code() -> int | None:
        """How the server ends a connection that authenticates with a forged token."""
        with connect(url, additional_headers={"X-Forwarded-For": source}) as socket:
            try:
                socket.send(json.dumps({"type": "auth", "token": "not-a-token"}))
                socket.recv(timeout=10)
            except ConnectionClosed as closed:  # throttled: closed before the token is read
                return closed.rcvd.code if closed.rcvd else None
        return None

    assert [close_code() for _ in range(6)] == [4401] * 5 + [4429]


def test_invalid_token_flood_throttles_the_source(client: ApiClient, tenant: Tenant) -> None:
    source = _source()
    headers = {"X-Forwarded-For": source, "Authorization": "Bearer not-a-token"}
    statuses = [client.get(f"{API}/users/me", headers=headers).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # Every API request from the source is refused while it lasts, good credentials or not.
    with _logged_in(str(client.base_url), tenant.owner) as owner:
        assert owner.get(f"{API}/users/me", headers={"X-Forwarded-For": source}).status_code == 429
        assert owner.get(f"{API}/users/me").status_code == 200  # from elsewhere: fine


def test_probing_other_tenants_ids_throttles_the_source(
    server: LaunchedBackend, tenant: Tenant
) -> None:
    source = {"X-Forwarded-For": _source()}
    with _logged_in(server.base_url, tenant.owner) as owner:
        statuses = [
            owner.get(f"{API}/teams/{uuid.uuid4()}", headers=source).status_code for _ in range(6)
        ]
        assert statuses == [404] * 5 + [429]
        # A 404 of a route without an id is not probing: another source's listing is fine.
        assert owner.get(f"{API}/teams", headers={"X-Forwarded-For": _source()}).status_code == 200


def test_api_key_rate_limit_with_ratelimit_headers(server: LaunchedBackend, tenant: Tenant) -> None:
    with _logged_in(server.base_url, tenant.owner) as owner:
        key = expect(owner.post(f"{API}/api-keys", json={"name": "bot"}), 201)["key"]
    with ApiClient(server.base_url) as bot:
        bot.use_credential(key)
        answers = [bot.get(f"{API}/users/me") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    policy = answers[0].headers["RateLimit-Policy"]
    assert policy.startswith('"api-key";q=5;w=')
    remaining = [a.headers["RateLimit"].split(";")[1] for a in answers[:5]]
    assert remaining == ["r=4", "r=3", "r=2", "r=1", "r=0"]
    refused = answers[5]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit"].startswith('"api-key";r=0;t=')
    assert refused.headers["RateLimit-Policy"] == policy


def test_429_is_documented_on_every_api_operation(client: ApiClient) -> None:
    schema = expect(client.get("/openapi.json"), 200)
    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation
    ]
    assert operations
    for path, method, operation in operations:
        answer = operation["responses"].get("429")
        assert answer is not None, f"{method.upper()} {path} does not document 429"
        assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= set(answer["headers"])


def test_events_are_on_metrics(client: ApiClient) -> None:
    # The earlier tests' detections; one of our own to be independent of their order.
    source = _source()
    for _ in range(5):
        _login(client, unique_email(), PASSWORD, source)
    wanted = 'renum_security_events_total{action="throttled",kind="user-enumeration"}'
    for _ in range(100):
        text = client.get("/metrics").text
        if wanted in text:
            break
        time.sleep(0.1)
    assert wanted in text


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_two_processes_sharing_redis_enforce_one_limit() -> None:
    redis = services.redis()
    redis.require()
    redis_url = redis.url
    # The counters live in the shared Redis for an hour: an admin of this run's own, so that
    # an earlier run's failures on the launcher's usual admin do not count here.
    own = {
        **LOW,
        "RENUM_REDIS_URL": redis_url,
        "RENUM_BOOTSTRAP_ADMIN_EMAIL": unique_email("admin"),
    }
    first = LaunchedBackend.start("sqlite", extra_env=own)
    try:
        shared = {**own, "RENUM_BOOTSTRAP_ADMIN_PASSWORD": first.admin_password}
        second = LaunchedBackend.start(
            "sqlite", extra_env=shared, database_url=first.env["RENUM_DATABASE__URL"]
        )
        try:
            with ApiClient(first.base_url) as one, ApiClient(second.base_url) as two:
                email, attacker = first.admin_email, _source()
                # Three failures, spread over both processes, reach the threshold of three.
                assert _login(one, email, PASSWORD, attacker).status_code == 401
                assert _login(two, email, PASSWORD, attacker).status_code == 401
                assert _login(one, email, PASSWORD, attacker).status_code == 401
                assert _login(two, email, PASSWORD, attacker).status_code == 429
                assert _login(one, email, PASSWORD, attacker).status_code == 429
                # The admin still logs in, through either process, from a known context.
                assert _login(one, email, first.admin_password, None).status_code == 200
                assert _login(two, email, first.admin_password, None).status_code == 200
        finally:
            second.stop()
    finally:
        first.stop()
