"""Dependencies failing under a running backend: PostgreSQL and Redis unreachable (closed port)
and hung (through qa/fault_proxy.py), live connections cut, pending migrations, readiness
turning 503 after the failure threshold and back to 200 without a restart, probes answering in
milliseconds while every dependency hangs, and the production rule at start-up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from qa import services
from qa.client import ApiClient
from qa.fault_proxy import FaultProxy
from qa.launcher import REPO_ROOT, BackendFailed, LaunchedBackend
from qa.plugin import LaunchBackend

PROBE_TOKEN = "probe-token-0123456789abcdef"
TOKEN = {"X-Probe-Token": PROBE_TOKEN}
# Fast checks so faults show within seconds: every 0.3 s, 1 s timeout, 2 failures in a row.
FAST = {
    "RENUM_HEALTH__INTERVAL_SECONDS": "0.3",
    "RENUM_HEALTH__TIMEOUT_SECONDS": "1",
    "RENUM_HEALTH__FAILURE_THRESHOLD": "2",
    "RENUM_HEALTH__CHECKS": json.dumps({"packages": {"interval_seconds": 3600}}),
    "RENUM_HEALTH__PROBE_TOKEN": PROBE_TOKEN,
}
PROBE_BUDGET_SECONDS = 0.5


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DegradedBackend(LaunchedBackend):
    """A backend expected to start degraded: waits for liveness, not readiness."""

    wait_for = "live"


@pytest.fixture
def launch_degraded() -> Iterator[Callable[..., LaunchedBackend]]:
    started: list[LaunchedBackend] = []

    def launch(flavour: str = "sqlite", **env: str) -> LaunchedBackend:
        server = DegradedBackend.start(flavour, extra_env={**FAST, **env})
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


@pytest.fixture
def postgres_database() -> Iterator[tuple[str, int]]:
    """A fresh database on the local PostgreSQL: (its name, the server's port)."""
    service = services.postgres()
    service.require()
    name = f"renum_faults_{uuid.uuid4().hex[:12]}"
    services.create_postgres_database(name)
    try:
        yield name, service.address[1]
    finally:
        services.drop_postgres_database(name)


def url_via(url: str, port: int, database: str | None = None) -> str:
    """``url`` with its port (and optionally its database) replaced."""
    parts = urlsplit(url)
    path = f"/{database}" if database else parts.path
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return f"{parts.scheme}://{netloc}:{port}{path}"


def details(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/health/dependencies", headers=TOKEN, timeout=5)


def entry(body: dict[str, Any], key: str) -> dict[str, Any]:
    return body["checks"][key][0]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def ready_status(base_url: str) -> int:
    return httpx.get(f"{base_url}/health/ready", timeout=5).status_code


def assert_probes_fast(base_url: str, rounds: int = 5) -> None:
    """Every probe answers within the budget, over several rounds."""
    with httpx.Client(base_url=base_url, timeout=5) as http:
        for _ in range(rounds):
            for path, headers in [
                ("/health/live", {}),
                ("/health/ready", {}),
                ("/health/dependencies", {}),
                ("/health/dependencies", TOKEN),
            ]:
                start = time.perf_counter()
                response = http.get(path, headers=headers)
                elapsed = time.perf_counter() - start
                assert response.status_code in (200, 503), path
                assert elapsed < PROBE_BUDGET_SECONDS, f"{path} took {elapsed:.3f}s"


# --- unreachable ----------------------------------------------------------------------------


def test_unreachable_postgresql_starts_degraded_with_a_clear_entry(
    launch_degraded: Callable[..., LaunchedBackend],
) -> None:
    url = f"postgresql+asyncpg://renum:hunter2-secret@127.0.0.1:{closed_port()}/renum"
    server = launch_degraded(RENUM_DATABASE__URL=url)
    assert httpx.get(f"{server.base_url}/health/live").status_code == 200
    assert ready_status(server.base_url) == 503
    anonymous = httpx.get(f"{server.base_url}/health/dependencies")
    assert (anonymous.status_code, anonymous.json()) == (503, {"status": "fail"})
    response = details(server.base_url)
    assert response.status_code == 503
    database = entry(response.json(), "database:responseTime")
    assert database["status"] == "fail"
    assert database["output"].startswith("cannot connect to postgresql+asyncpg://renum:***@")
    assert "RENUM_DATABASE__URL" in database["fix"]
    assert database["affectedEndpoints"] == ["* /api/v1/*"]
    assert "hunter2-secret" not in server.log_text()
    assert "starting_degraded" in server.log_text()
    assert_probes_fast(server.base_url, rounds=2)


def test_unreachable_redis_degrades_to_warn_and_names_affected_endpoints(
    launch_degraded: Callable[..., LaunchedBackend],
) -> None:
    server = launch_degraded(RENUM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    assert ready_status(server.base_url) == 200  # Redis is optional
    body = details(server.base_url).json()
    assert body["status"] == "warn"
    redis = entry(body, "redis:responseTime")
    assert redis["status"] == "fail"
    assert redis["critical"] is False
    assert "did not answer" in redis["output"]
    assert "GET /api/v1/executions/{execution_id}/events" in redis["affectedEndpoints"]


# --- hung, cut and recovered ----------------------------------------------------------------


def test_hung_postgresql_turns_readiness_503_after_the_threshold_and_recovers(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        url = url_via(services.postgres().url, proxy.port, name)
        # Five failed runs (about a second each) before readiness turns: time to see the hold,
        # also on a busy machine. A long TTL: the held result must not go stale during a hung
        # run.
        server = launch_degraded(
            RENUM_DATABASE__URL=url,
            RENUM_HEALTH__FAILURE_THRESHOLD="5",
            RENUM_HEALTH__TTL_SECONDS="60",
        )
        wait_for(lambda: ready_status(server.base_url) == 200, what="ready through the proxy")

        proxy.hang()
        # Hysteresis: failed runs below the threshold are noted while readiness holds.
        wait_for(
            lambda: (
                "of 5 before this check fails"
                in entry(details(server.base_url).json(), "database:responseTime")["output"]
            ),
            what="a failure noted while the check still passes",
        )
        wait_for(lambda: ready_status(server.base_url) == 503, what="503 after the threshold")
        wait_for(
            lambda: (
                entry(details(server.base_url).json(), "database:responseTime")["output"]
                == "no answer within 1s"
            ),
            what="the database check failed",
        )
        assert_probes_fast(server.base_url)

        proxy.pass_through()  # recovery without a restart
        wait_for(lambda: ready_status(server.base_url) == 200, what="200 after recovery")
        assert entry(details(server.base_url).json(), "database:responseTime")["status"] == "pass"

        proxy.cut()  # live pooled connections reset: the next checks reconnect
        time.sleep(1.0)
        assert ready_status(server.base_url) == 200
        assert entry(details(server.base_url).json(), "database:responseTime")["status"] == "pass"
        server.stop()


def test_postgresql_hung_at_start_up_does_not_hang_start_up_and_recovers_without_a_restart(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        proxy.hang()
        server = launch_degraded(
            RENUM_DATABASE__URL=url_via(services.postgres().url, port=proxy.port, database=name)
        )
        assert "auto_migrate_skipped" in server.log_text()
        assert ready_status(server.base_url) == 503
        schema = entry(details(server.base_url).json(), "schema:revision")
        assert schema["status"] == "fail"
        assert "renum db upgrade" in schema["fix"]
        assert_probes_fast(server.base_url, rounds=2)
        proxy.pass_through()
        # The database answers again: the migrations start-up skipped are applied, readiness
        # follows and the first admin is created, all without a restart.
        wait_for(lambda: ready_status(server.base_url) == 200, what="ready after recovery")
        assert entry(details(server.base_url).json(), "schema:revision")["status"] == "pass"
        # The first admin follows readiness (the same background task, a moment later).
        wait_for(lambda: "bootstrap_admin_created" in server.log_text(), what="first admin")
        assert "auto_migrate_completed" in server.log_text()
        with ApiClient(server.base_url) as admin:
            admin.login(server.admin_email, server.admin_password)
        server.stop()


def test_hung_redis_fails_within_its_timeout_while_probes_answer(
    launch_degraded: Callable[..., LaunchedBackend],
) -> None:
    redis = services.redis()
    redis.require()
    with FaultProxy(*redis.address) as proxy:
        server = launch_degraded(RENUM_REDIS_URL=url_via(redis.url, proxy.port))
        wait_for(
            lambda: (
                entry(details(server.base_url).json(), "redis:responseTime")["status"] == "pass"
            ),
            what="redis passing through the proxy",
        )
        proxy.hang()  # accepts TCP, never answers
        wait_for(
            lambda: (
                entry(details(server.base_url).json(), "redis:responseTime")["status"] == "fail"
            ),
            what="redis failing",
        )
        redis_entry = entry(details(server.base_url).json(), "redis:responseTime")
        assert redis_entry["observedValue"] < 1500  # bounded by the 1 s timeout
        assert ready_status(server.base_url) == 200
        assert_probes_fast(server.base_url)
        proxy.pass_through()
        wait_for(
            lambda: (
                entry(details(server.base_url).json(), "redis:responseTime")["status"] == "pass"
            ),
            what="redis recovered",
        )
        server.stop()


def test_probes_answer_in_milliseconds_while_every_dependency_hangs(
    launch_degraded: Callable[..., LaunchedBackend],
    postgres_database: tuple[str, int],
    fake_openai: Any,
) -> None:
    name, port = postgres_database
    redis = services.redis()
    redis.require()
    provider = urlsplit(fake_openai.base_url)
    with (
        FaultProxy("127.0.0.1", port) as pg,
        FaultProxy(*redis.address) as cache,
        FaultProxy(provider.hostname or "127.0.0.1", provider.port or 80) as llm,
    ):
        server = launch_degraded(
            RENUM_DATABASE__URL=url_via(services.postgres().url, pg.port, name),
            RENUM_REDIS_URL=url_via(redis.url, cache.port),
            RENUM_PROVIDERS__OPENAI_BASE_URL=f"http://127.0.0.1:{llm.port}/v1",
        )
        wait_for(lambda: details(server.base_url).json()["status"] == "pass", what="all pass")
        for proxy in (pg, cache, llm):
            proxy.hang()
        assert_probes_fast(server.base_url)
        wait_for(lambda: ready_status(server.base_url) == 503, what="503 while hung")
        assert_probes_fast(server.base_url)
        keys = ("database:responseTime", "redis:responseTime", "providers:responseTime")

        def all_failing() -> bool:
            body = details(server.base_url).json()
            return body["status"] == "fail" and all(
                entry(body, key)["status"] == "fail" for key in keys
            )

        wait_for(all_failing, what="every hung dependency failing its check")
        assert_probes_fast(server.base_url)
        for proxy in (pg, cache, llm):
            proxy.pass_through()
        wait_for(lambda: details(server.base_url).json()["status"] == "pass", what="recovered")
        server.stop()


# --- migrations and the production rule -----------------------------------------------------


def renum(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [str(Path(sys.executable).parent / "renum"), *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RENUM_")},
            "PYTHONPATH": str(REPO_ROOT),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def empty_database(db_flavour: str, tmp_path: Path) -> Iterator[str]:
    if db_flavour == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'pending.db'}"
        return
    name = f"renum_pending_{uuid.uuid4().hex[:12]}"
    url = services.create_postgres_database(name)
    try:
        yield url
    finally:
        services.drop_postgres_database(name)


def test_pending_migrations_keep_readiness_503_until_renum_db_upgrade(
    launch_degraded: Callable[..., LaunchedBackend], empty_database: str
) -> None:
    server = launch_degraded(
        RENUM_DATABASE__URL=empty_database, RENUM_DATABASE__AUTO_MIGRATE="false"
    )
    assert ready_status(server.base_url) == 503
    schema = entry(details(server.base_url).json(), "schema:revision")
    assert schema["status"] == "fail"
    assert schema["output"].startswith("migrations pending")
    assert schema["fix"] == "renum db upgrade"
    upgraded = renum("db", "upgrade", env={"RENUM_DATABASE__URL": empty_database})
    assert upgraded.returncode == 0, upgraded.stderr
    wait_for(lambda: ready_status(server.base_url) == 200, what="ready once migrated")


def test_production_refuses_to_start_on_a_failed_critical_dependency(
    launch_backend: LaunchBackend, tmp_path: Path
) -> None:
    with pytest.raises(BackendFailed) as caught:
        launch_backend(
            "sqlite",
            extra_env={
                "RENUM_ENVIRONMENT": "production",
                "RENUM_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
                "RENUM_DATABASE__AUTO_MIGRATE": "false",
            },
        )
    message = str(caught.value)
    assert "exited with code" in message
    assert "Renum cannot start: a critical dependency failed." in message
    assert "schema (alembic): migrations pending" in message
    assert "fix: renum db upgrade" in message
    assert "RENUM_HEALTH__START_DEGRADED=true" in message


def test_production_may_start_degraded_when_the_setting_allows(
    launch_degraded: Callable[..., LaunchedBackend], tmp_path: Path
) -> None:
    server = launch_degraded(
        RENUM_ENVIRONMENT="production",
        RENUM_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
        RENUM_DATABASE__AUTO_MIGRATE="false",
        RENUM_HEALTH__START_DEGRADED="true",
    )
    assert ready_status(server.base_url) == 503
    assert httpx.get(f"{server.base_url}/health/live").status_code == 200
