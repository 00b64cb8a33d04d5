"""The health probes on a running backend (SQLite and PostgreSQL): application/health+json,
anonymous status vs admin and probe-token details, a healthy report, the start-up event."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from qa.client import ApiClient
from qa.launcher import Backend
from qa.plugin import LaunchBackend

# Both databases: the database check reports the flavour it runs on.
pytestmark = pytest.mark.both_databases

HEALTH_JSON = "application/health+json"
PROBE_TOKEN = "probe-token-0123456789abcdef"
EXPECTED_KEYS = {
    "packages:version",
    "database:responseTime",
    "schema:revision",
    "redis:responseTime",
    "providers:responseTime",
}


@pytest.mark.parametrize("path", ["/health/live", "/livez", "/health/ready", "/readyz"])
def test_probes_answer_pass_as_health_json(client: ApiClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == HEALTH_JSON
    assert response.json() == {"status": "pass"}


def test_anonymous_callers_get_the_status_only(client: ApiClient) -> None:
    response = client.get("/health/dependencies")
    assert response.status_code == 200
    assert response.headers["content-type"] == HEALTH_JSON
    assert response.headers["cache-control"] == "no-store"
    # The shared backend cannot reach the default provider (no internet): warn, not fail.
    assert response.json() in ({"status": "pass"}, {"status": "warn"})


def test_other_roles_and_bad_credentials_get_the_status_only(
    viewer_client: ApiClient, owner_client: ApiClient, client: ApiClient
) -> None:
    for caller in (viewer_client, owner_client):
        assert set(caller.get("/health/dependencies").json()) == {"status"}
    forged = client.get("/health/dependencies", headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 200
    assert set(forged.json()) == {"status"}
    api_key = client.get("/health/dependencies", headers={"Authorization": "Bearer rk_nope"})
    assert set(api_key.json()) == {"status"}


def check_entries(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    assert key in body["checks"], sorted(body["checks"])
    return body["checks"][key]


def test_platform_admins_get_every_check(admin_client: ApiClient, backend: Backend) -> None:
    response = admin_client.get("/health/dependencies")
    assert response.status_code == 200
    body = response.json()
    assert set(body["checks"]) >= EXPECTED_KEYS
    assert body["version"] == "1"
    assert body["serviceId"] == "renum"
    assert body["releaseId"]
    [database] = check_entries(body, "database:responseTime")
    assert database["componentId"] == backend.flavour
    assert database["componentType"] == "datastore"
    assert database["status"] == "pass"
    assert database["observedUnit"] == "ms"
    assert isinstance(database["observedValue"], float)
    assert database["critical"] is True
    assert database["links"] == {"about": "troubleshooting.md#database"}
    [schema] = check_entries(body, "schema:revision")
    assert schema["status"] == "pass"
    for entries in body["checks"].values():
        for entry in entries:
            assert entry["time"].endswith("Z")
            if entry["status"] != "pass":
                assert entry["fix"], entry
                assert entry["affectedEndpoints"], entry


def launch_healthy(
    launch_backend: LaunchBackend, flavour: str, fake_openai: Any, **env: str
) -> Backend:
    return launch_backend(
        flavour,
        extra_env={
            "RENUM_PROVIDERS__OPENAI_BASE_URL": fake_openai.base_url,
            "RENUM_HEALTH__PROBE_TOKEN": PROBE_TOKEN,
            **env,
        },
    )


def test_healthy_report_passes_with_redis_and_a_reachable_provider(
    launch_backend: LaunchBackend, db_flavour: str, fake_openai: Any
) -> None:
    from qa import services

    services.redis().require()
    server = launch_healthy(
        launch_backend, db_flavour, fake_openai, RENUM_REDIS_URL=services.redis().url
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        response = http.get("/health/dependencies", headers={"X-Probe-Token": PROBE_TOKEN})
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "pass", body.get("output")
        assert "output" not in body
        [redis] = check_entries(body, "redis:responseTime")
        assert redis["output"].startswith("Redis ")
        [provider] = check_entries(body, "providers:responseTime")
        assert provider["componentId"] == fake_openai.base_url
        assert provider["componentType"] == "system"
        # The probe token also works as a bearer credential; a wrong one shows the status only.
        bearer = http.get(
            "/health/dependencies", headers={"Authorization": f"Bearer {PROBE_TOKEN}"}
        )
        assert set(bearer.json()) >= {"status", "checks"}
        wrong = http.get("/health/dependencies", headers={"X-Probe-Token": PROBE_TOKEN + "x"})
        assert wrong.json() == {"status": "pass"}
    # No token was spent: the provider only saw GET /models.
    assert {(r.method, r.path) for r in fake_openai.requests} == {("GET", "/v1/models")}


def test_start_up_validation_is_logged_once_as_one_structured_event(
    launch_backend: LaunchBackend, fake_openai: Any
) -> None:
    server = launch_healthy(launch_backend, "sqlite", fake_openai)
    events = [
        json.loads(line)
        for line in server.log_text().splitlines()
        if line.startswith("{") and '"dependency_validation"' in line
    ]
    assert len(events) == 1
    [event] = events
    assert event["status"] == "pass"
    assert event["problems"] == []
    assert event["checked"] == event["passing"] > 5
    assert PROBE_TOKEN not in server.log_text()
