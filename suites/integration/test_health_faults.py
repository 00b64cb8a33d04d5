"""Dependencies failing under a running backend: PostgreSQL and Redis unreachable (closed port)
and hung (through qa/fault_proxy.py), live connections cut, pending migrations, readiness
turning 503 after the failure threshold and back to 200 without a restart, probes answering as
fast while a dependency hangs as while all is well (a ratio of the two, measured in the same
test), and the production rule at start-up. Every dependency hung at once, cut and refused in
turn, is an outage drill: ``suites/drills/test_outage_drills.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faults_support as fs
import httpx
import pytest
from faults_support import (
    assert_probes_unaffected,
    details,
    entry,
    probe_times,
    ready_status,
    url_via,
    wait_for,
)

from qa import services
from qa.fault_proxy import FaultProxy
from qa.launcher import REPO_ROOT, BackendFailed, LaunchedBackend
from qa.plugin import LaunchBackend

launch_degraded = fs.launch_degraded
postgres_database = fs.postgres_database
closed_port = fs.closed_port


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
    probe_times(server.base_url, rounds=2)  # every probe answers


def test_unreachable_redis_degrades_to_warn_and_names_affected_endpoints(
    launch_degraded: Callable[..., LaunchedBackend],
) -> None:
    # The closed port refuses at once; the other checks get time to spare on a busy machine
    # (a start-up check timing out there would start the backend degraded for a round).
    server = launch_degraded(
        RENUM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", RENUM_HEALTH__TIMEOUT_SECONDS="5"
    )
    body = wait_for(
        lambda: (report := details(server.base_url).json())["status"] == "warn" and report,
        what="a report that warns (Redis failing, every critical check passing)",
    )
    assert ready_status(server.base_url) == 200  # Redis is optional
    redis = entry(body, "redis:responseTime")
    assert redis["status"] == "fail"
    assert redis["critical"] is False
    assert "did not answer" in redis["output"]
    assert "GET /api/v1/executions/{execution_id}/events" in redis["affectedEndpoints"]


# --- hung, cut and recovered ----------------------------------------------------------------


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_hung_postgresql_turns_readiness_503_after_the_threshold_and_recovers(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        url = url_via(services.postgres().url, proxy.port, name)
        # Five failed runs (about two seconds each: a run every second, each waiting its 1 s
        # timeout) before readiness turns: some eight seconds to see the hold, also on a busy
        # machine. A long TTL: the held result must not go stale during a hung run.
        server = launch_degraded(
            RENUM_DATABASE__URL=url,
            RENUM_HEALTH__FAILURE_THRESHOLD="5",
            RENUM_HEALTH__INTERVAL_SECONDS="1",
            RENUM_HEALTH__TTL_SECONDS="60",
        )
        wait_for(lambda: ready_status(server.base_url) == 200, what="ready through the proxy")
        healthy = probe_times(server.base_url)

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
        assert_probes_unaffected(probe_times(server.base_url), healthy)

        proxy.pass_through()  # recovery without a restart
        wait_for(lambda: ready_status(server.base_url) == 200, what="200 after recovery")
        assert entry(details(server.base_url).json(), "database:responseTime")["status"] == "pass"

        proxy.cut()  # live pooled connections reset: the next checks reconnect
        checked = {entry(details(server.base_url).json(), "database:responseTime")["time"]}

        def three_checks_since_the_cut() -> bool:
            checked.add(entry(details(server.base_url).json(), "database:responseTime")["time"])
            return len(checked) > 3

        wait_for(three_checks_since_the_cut, what="three database checks after the cut")
        assert ready_status(server.base_url) == 200
        assert entry(details(server.base_url).json(), "database:responseTime")["status"] == "pass"
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
        healthy = probe_times(server.base_url)
        proxy.hang()  # accepts TCP, never answers
        wait_for(
            lambda: (
                entry(details(server.base_url).json(), "redis:responseTime")["status"] == "fail"
            ),
            what="redis failing",
        )
        redis_entry = entry(details(server.base_url).json(), "redis:responseTime")
        # Ended by a timeout, not left hanging: the client's own (0.8 s) or, on a loaded
        # machine where the event loop wakes late, the check's 1 s bound around it.
        output = redis_entry["output"]
        assert "did not answer (TimeoutError" in output or output == "no answer within 1s", output
        assert ready_status(server.base_url) == 200
        assert_probes_unaffected(probe_times(server.base_url), healthy)
        proxy.pass_through()
        wait_for(
            lambda: (
                entry(details(server.base_url).json(), "redis:responseTime")["status"] == "pass"
            ),
            what="redis recovered",
        )
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


@pytest.mark.both_databases  # migrations
def test_pending_migrations_keep_readiness_503_until_renum_db_upgrade(
    launch_degraded: Callable[..., LaunchedBackend], empty_database: str
) -> None:
    server = launch_degraded(
        RENUM_DATABASE__URL=empty_database, RENUM_DATABASE__AUTO_MIGRATE="false"
    )
    assert ready_status(server.base_url) == 503

    def schema_check() -> dict[str, Any] | None:
        """The schema check's entry once it names the pending migrations (it runs every 0.3 s
        with a 1 s timeout: on a busy machine a round may time out first)."""
        found: dict[str, Any] = entry(details(server.base_url).json(), "schema:revision")
        return found if found["output"].startswith("migrations pending") else None

    schema = wait_for(schema_check, what="the schema check naming the pending migrations")
    assert schema["status"] == "fail"
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
                "RENUM_ENVIRONMENT": "production",  # its profile applies no migration
                "RENUM_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
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
