"""Outage drills: every dependency of a running backend (PostgreSQL, Redis, the model
provider) behind a fault proxy, failing at once and in turn for as long as the health monitor
needs to notice, then recovering without a restart.

The default run keeps one dependency at a time (``suites/integration/test_health_faults.py``:
PostgreSQL hung, cut and recovered; Redis hung); this drill takes every dependency down
together, twice (hung, then refused), which takes a minute or so:

- while everything hangs, and while everything refuses connections, the probes answer as fast
  as while all was well (their medians compared as a ratio, measured in the same test),
  readiness turns 503 and each dependency's check fails;
- after each outage every check passes again and readiness returns, with no restart;
- live pooled connections cut from under the backend are replaced by the next checks;
- PostgreSQL hung while the backend starts: the start-up does not hang, the backend starts
  degraded, and once the database answers it applies the skipped migrations, turns ready and
  creates the first admin, without a restart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qa import services
from qa.client import ApiClient
from qa.fault_proxy import FaultProxy
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
import faults_support as fs

launch_degraded = fs.launch_degraded
postgres_database = fs.postgres_database

KEYS = ("database:responseTime", "redis:responseTime", "providers:responseTime")
# An outage drill may take its time on a busy machine: each wait is bounded, never timed.
PATIENCE = 60.0


def wait_for(condition: Callable[[], object], what: str) -> None:
    wait_until(condition, timeout=PATIENCE, what=what, interval=0.1)


def statuses(base_url: str) -> tuple[str, dict[str, str]]:
    body = fs.details(base_url).json()
    return body["status"], {key: fs.entry(body, key)["status"] for key in KEYS}


def all_failing(base_url: str) -> bool:
    overall, checks = statuses(base_url)
    return overall == "fail" and set(checks.values()) == {"fail"}


def all_passing(base_url: str) -> bool:
    overall, checks = statuses(base_url)
    return overall == "pass" and set(checks.values()) == {"pass"}


def test_every_dependency_down_at_once_hung_then_refused_and_back(
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
        proxies = (pg, cache, llm)
        server = launch_degraded(
            RENUM_DATABASE__URL=fs.url_via(services.postgres().url, pg.port, name),
            RENUM_REDIS_URL=fs.url_via(redis.url, cache.port),
            RENUM_PROVIDERS__OPENAI_BASE_URL=f"http://127.0.0.1:{llm.port}/v1",
        )
        base_url = server.base_url
        wait_for(lambda: all_passing(base_url), what="every dependency passing")
        healthy = fs.probe_times(base_url)

        for outage in ("hang", "refuse"):
            for proxy in proxies:
                getattr(proxy, outage)()
            fs.assert_probes_unaffected(fs.probe_times(base_url), healthy)
            wait_for(lambda: fs.ready_status(base_url) == 503, what=f"503 ({outage})")
            wait_for(lambda: all_failing(base_url), what=f"every check failing ({outage})")
            fs.assert_probes_unaffected(fs.probe_times(base_url), healthy)

            for proxy in proxies:
                proxy.pass_through()
            wait_for(lambda: all_passing(base_url), what=f"recovered after {outage}")
            assert fs.ready_status(base_url) == 200

        # Live pooled connections reset under a healthy backend: the next checks reconnect.
        for proxy in proxies:
            proxy.cut()
        seen = {fs.entry(fs.details(base_url).json(), "database:responseTime")["time"]}

        def three_checks_since_the_cut() -> bool:
            seen.add(fs.entry(fs.details(base_url).json(), "database:responseTime")["time"])
            return len(seen) > 3

        wait_for(three_checks_since_the_cut, what="three database checks after the cut")
        wait_for(lambda: all_passing(base_url), what="every check passing after the cut")
        assert fs.ready_status(base_url) == 200
        server.stop()


def test_postgresql_hung_at_start_up_does_not_hang_start_up_and_recovers_without_a_restart(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        proxy.hang()
        server = launch_degraded(
            RENUM_DATABASE__URL=fs.url_via(services.postgres().url, port=proxy.port, database=name)
        )
        assert "auto_migrate_skipped" in server.log_text()
        assert fs.ready_status(server.base_url) == 503
        schema = fs.entry(fs.details(server.base_url).json(), "schema:revision")
        assert schema["status"] == "fail"
        assert "renum db upgrade" in schema["fix"]
        hung = fs.probe_times(server.base_url, rounds=2)
        proxy.pass_through()
        # The database answers again: the migrations start-up skipped are applied, readiness
        # follows and the first admin is created, all without a restart.
        fs.wait_for(lambda: fs.ready_status(server.base_url) == 200, what="ready after recovery")
        assert fs.entry(fs.details(server.base_url).json(), "schema:revision")["status"] == "pass"
        # The first admin follows readiness (the same background task, a moment later).
        fs.wait_for(lambda: "bootstrap_admin_created" in server.log_text(), what="first admin")
        assert "auto_migrate_completed" in server.log_text()
        with ApiClient(server.base_url) as admin:
            admin.login(server.admin_email, server.admin_password)
        fs.assert_probes_unaffected(hung, healthy=fs.probe_times(server.base_url, rounds=2))
        server.stop()
