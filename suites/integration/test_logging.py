"""Log capture: the server logs every request with its request id, one JSON event per line, and
never a password, a token or an API key — whatever the client sends, wherever it sends it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from integration_support import MakeUser, bearer, log_events

from qa.client import API, ApiClient
from qa.factories import expect
from qa.launcher import Backend

# Both databases: what each driver puts in a logged error differs (PostgreSQL echoes parameters).
pytestmark = pytest.mark.both_databases

COVERAGE_WARNING = "Coverage.py warning"


@pytest.fixture
def launched(backend: Backend) -> Backend:
    if not backend.launched:
        pytest.skip("the server log is only readable for a backend the harness launched")
    return backend


def test_secrets_never_reach_the_log(
    launched: Backend, client: ApiClient, owner_client: ApiClient, make_user: MakeUser
) -> None:
    password = f"log-capture-{uuid.uuid4().hex}"
    user = make_user("member", password=password)
    marker = uuid.uuid4().hex[:12]
    sent: dict[str, str] = {}

    def call(step: str, method: str, path: str, **kwargs: Any) -> Any:
        request_id = f"logcap-{marker}-{step}"
        headers = {"X-Request-ID": request_id, **kwargs.pop("headers", {})}
        sent[request_id] = path
        return client.request(method, path, headers=headers, **kwargs)

    login = {"username": user.email, "password": password}
    tokens = expect(call("login", "POST", f"{API}/auth/token", data=login), 200)
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    # A failed login with the password in the wrong field, and a wrong password.
    wrong = {"username": password, "password": password}
    assert call("login-swapped", "POST", f"{API}/auth/token", data=wrong).status_code == 401
    bad = {"username": user.email, "password": password + "-wrong"}
    assert call("login-wrong", "POST", f"{API}/auth/token", data=bad).status_code == 401

    expect(call("me", "GET", f"{API}/users/me", headers=bearer(access)), 200)
    rotated = expect(
        call("refresh", "POST", f"{API}/auth/refresh", json={"refresh_token": refresh}), 200
    )
    created = expect(
        call(
            "key",
            "POST",
            f"{API}/api-keys",
            json={"name": "log-capture"},
            headers=bearer(rotated["access_token"]),
        ),
        201,
    )
    key = created["key"]
    expect(call("key-use", "GET", f"{API}/users/me", headers=bearer(key)), 200)
    # Secrets where they do not belong: the query string, a bad header, a tampered token, a
    # replayed refresh token, a malformed body.
    assert call("key-query", "GET", f"{API}/users/me", params={"api_key": key}).status_code == 401
    tampered = {"Authorization": f"Token {access}"}
    assert call("scheme", "GET", f"{API}/users/me", headers=tampered).status_code == 401
    replay = {"refresh_token": refresh}
    assert call("replay", "POST", f"{API}/auth/refresh", json=replay).status_code == 401
    garbled = f'{{"refresh_token": "{rotated["refresh_token"]}"'.encode()
    response = call(
        "garbled",
        "POST",
        f"{API}/auth/logout",
        content=garbled,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    # An owner changes the password (the new one travels in a JSON body).
    new_password = f"changed-{uuid.uuid4().hex}"
    expect(
        owner_client.patch(
            f"{API}/users/{user.id}",
            json={"password": new_password},
            headers={"X-Request-ID": f"logcap-{marker}-patch"},
        ),
        200,
    )
    sent[f"logcap-{marker}-patch"] = f"{API}/users/{user.id}"

    events = log_events(launched, *sent)
    log = launched.log_text()
    secrets = {
        "password": password,
        "new password": new_password,
        "access token": access,
        "refresh token": refresh,
        "rotated access token": rotated["access_token"],
        "rotated refresh token": rotated["refresh_token"],
        "API key": key,
        "API key without its prefix": key.removeprefix("rk_"),
    }
    for token_name in ("access token", "refresh token"):
        # A JWT's signature alone is enough to recognise a leak.
        secrets[f"{token_name} signature"] = secrets[token_name].rsplit(".", 1)[1]
    for name, secret in secrets.items():
        assert secret not in log, f"the {name} appears in the server log"

    # ... while every request was logged, with its id, method, path and status.
    requests = {
        event["request_id"]: event
        for event in events
        if event.get("event") == "request" and str(event.get("request_id", "")).startswith("logcap")
    }
    for request_id, path in sent.items():
        assert request_id in requests, f"request {request_id} ({path}) was not logged"
        assert requests[request_id]["path"] == path
        assert isinstance(requests[request_id]["status"], int)
    assert requests[f"logcap-{marker}-login"]["status"] == 200
    assert requests[f"logcap-{marker}-replay"]["status"] == 401


def test_log_is_one_json_event_per_line_with_request_ids(
    launched: Backend, client: ApiClient
) -> None:
    request_id = f"json-{uuid.uuid4().hex}"
    client.get(f"{API}/users/me", headers={"X-Request-ID": request_id})
    log_events(launched, request_id)  # waits until the request's line is written
    text = launched.log_text()
    lines = [line for line in text[: text.rfind("\n")].splitlines() if line.strip()]
    events = []
    for line in lines:
        if line.startswith(COVERAGE_WARNING):
            continue  # written by the harness's coverage measurement, not by the server
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line[:200]}")
    assert all({"event", "level", "timestamp"} <= event.keys() for event in events)
    request_events = [event for event in events if event["event"] == "request"]
    assert request_events
    assert all(event.get("request_id") for event in request_events)
    mine = [event for event in request_events if event["request_id"] == request_id]
    assert len(mine) == 1
    assert mine[0]["status"] == 401
    assert mine[0]["method"] == "GET"
