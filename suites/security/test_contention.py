"""Contention on the embedded database: a burst of concurrent logins on SQLite (each one an
argon2 verification, ~100 ms of CPU) answers no 5xx, and readiness stays 200 throughout while
the database check keeps running and passing (it never waits for SQLite's write lock). Every
429 the API sends says when to retry (`Retry-After`)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from qa.client import API, ApiClient
from qa.factories import create_tenant, create_user, expect, tenant_with_owner
from qa.fake_openai import FakeOpenAI, Hang
from qa.plugin import LaunchBackend

# Both databases: contention and locking are the database's.
pytestmark = pytest.mark.both_databases

PROBE_TOKEN = "contention-probe-token-0123456789"
# The database and schema checks run four times a second, time out after 2 s and fail
# readiness after two failures in a row: a check that waited for the write lock through a
# burst of logins would show.
STRICT_CHECKS = (
    '{"database": {"interval_seconds": 0.25, "timeout_seconds": 2, "failure_threshold": 2},'
    ' "schema": {"interval_seconds": 0.25, "timeout_seconds": 2, "failure_threshold": 2}}'
)
USERS = 10


async def _burst(base_url: str, logins: list[dict[str, str]]) -> dict[str, Any]:
    """Every login at once, while readiness and the database check are watched."""
    limits = httpx.Limits(max_connections=len(logins) + 10, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=base_url, timeout=180, limits=limits) as http:
        done = asyncio.Event()
        ready: list[int] = []
        checks: list[tuple[str, str]] = []

        async def watch() -> None:
            while not done.is_set():
                ready.append((await http.get("/health/ready")).status_code)
                report = await http.get(
                    "/health/dependencies", headers={"X-Probe-Token": PROBE_TOKEN}
                )
                (database,) = report.json()["checks"]["database:responseTime"]
                checks.append((database["time"], database["status"]))
                await asyncio.sleep(0.05)

        async def logins_at_once() -> list[httpx.Response]:
            try:
                return await asyncio.gather(
                    *(http.post(f"{API}/auth/token", data=form) for form in logins)
                )
            finally:
                done.set()

        watcher = asyncio.create_task(watch())
        responses = await logins_at_once()
        await watcher
        return {"responses": responses, "ready": ready, "checks": checks}


def test_a_login_burst_on_sqlite_gives_no_5xx_and_readiness_stays_up(
    launch_backend: LaunchBackend, deep: bool
) -> None:
    backend = launch_backend(
        "sqlite",
        extra_env={
            "RENUM_HEALTH__PROBE_TOKEN": PROBE_TOKEN,
            "RENUM_HEALTH__CHECKS": STRICT_CHECKS,
        },
    )
    admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
    try:
        tenant = create_tenant(admin)
        owner = ApiClient(backend.base_url).login(tenant.owner.email, tenant.owner.password)
        try:
            members = [create_user(owner, "member") for _ in range(USERS)]
        finally:
            owner.close()
    finally:
        admin.close()
    burst = 400 if deep else 100
    logins = [
        {"username": members[n % USERS].email, "password": members[n % USERS].password}
        for n in range(burst)
    ]

    watched = asyncio.run(_burst(backend.base_url, logins))

    statuses = [response.status_code for response in watched["responses"]]
    failed = [r.text for r in watched["responses"] if r.status_code >= 500]
    assert not failed, (sorted(set(statuses)), failed[:3])
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) > 0
    for response in watched["responses"]:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
    assert watched["ready"], "readiness was never read during the burst"
    assert set(watched["ready"]) == {200}
    runs = {time for time, _ in watched["checks"]}
    assert len(runs) >= 2, "the database check did not run during the burst"
    assert {status for _, status in watched["checks"]} == {"pass"}
    # Every login worked: each user can still log in, and the tokens work.
    with ApiClient(backend.base_url) as anonymous:
        tokens = next(r for r in watched["responses"] if r.status_code == 200).json()
        me = anonymous.get(
            f"{API}/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert me.status_code == 200


@pytest.mark.parametrize("flavour", ["sqlite"])
def test_the_concurrent_execution_limit_answers_429_with_retry_after(
    launch_backend: LaunchBackend, fake_openai: FakeOpenAI, flavour: str
) -> None:
    fake_openai.script(Hang(60))
    backend = launch_backend(
        flavour, extra_env={"RENUM_EXECUTIONS__MAX_CONCURRENT_PER_ACCOUNT": "1"}
    )
    _, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    try:
        agent = expect(
            owner.post(
                f"{API}/agents",
                json={
                    "name": "hangs",
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "retry": {"max_attempts": 1},
                },
            ),
            201,
        )
        team = expect(
            owner.post(f"{API}/teams", json={"name": "t", "agent_ids": [agent["id"]]}), 201
        )
        running = expect(
            owner.post(f"{API}/teams/{team['id']}/executions", json={"prompt": "a"}), 202
        )
        refused = owner.post(f"{API}/teams/{team['id']}/executions", json={"prompt": "b"})
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        expect(owner.post(f"{API}/executions/{running['id']}/cancel?wait=20"), 202)
    finally:
        owner.close()
