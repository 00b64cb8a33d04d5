"""Every operations capability is optional: a backend started with one switched off (and with
all of them off) serves the base API's smoke flow unchanged, and the switched-off capability's
routes do not exist. The switch is each capability's rollback. SQLite only: switching a
capability does not depend on the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from teams_support import create_agent, create_team, run_to_end

from qa.client import API, ApiClient
from qa.factories import expect, tenant_with_owner
from qa.launcher import LaunchedBackend

# What each capability serves, read anonymously (metrics are public outside production).
ROUTES = {
    "health": ["/health/live", "/health/ready", "/health/dependencies"],
    "metrics": ["/metrics"],
    "docs": ["/docs", "/static/swagger-ui/swagger-ui.css"],
}
CASES = [*ROUTES, "all"]


def switched_off(case: str) -> set[str]:
    return set(ROUTES) if case == "all" else {case}


@pytest.fixture(params=CASES, ids=[f"{case}-off" for case in CASES])
def partial_backend(request: pytest.FixtureRequest) -> Iterator[tuple[LaunchedBackend, set[str]]]:
    off = switched_off(request.param)
    env = {f"RENUM_{name.upper()}__ENABLED": "false" for name in off}
    backend = LaunchedBackend.start("sqlite", extra_env=env)
    try:
        yield backend, off
    finally:
        backend.stop()


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_the_base_api_works_with_capabilities_switched_off(
    partial_backend: tuple[LaunchedBackend, set[str]],
) -> None:
    backend, off = partial_backend
    tenant, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    try:
        agent = create_agent(owner)
        team = create_team(owner, [agent])
        execution = run_to_end(owner, team, "hello")
        assert execution["status"] == "completed"
        listed = expect(owner.get(f"{API}/executions", params={"team_id": team["id"]}), 200)
        assert [item["id"] for item in listed["items"]] == [execution["id"]]
        assert expect(owner.get(f"{API}/usage"), 200)["group_by"] == "team"
        assert expect(owner.get(f"{API}/users/me"), 200)["account_id"] == tenant.account_id
    finally:
        owner.close()

    with ApiClient(backend.base_url) as anonymous:
        schema = expect(anonymous.get("/openapi.json"), 200)
        for capability, paths in ROUTES.items():
            for path in paths:
                status = anonymous.get(path).status_code
                if capability in off:
                    assert status == 404, (capability, path)
                    assert path not in schema["paths"]
                else:
                    assert status == 200, (capability, path)
