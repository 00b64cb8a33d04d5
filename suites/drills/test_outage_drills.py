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
  creates the first admin, without a restart;
- two backend processes on one PostgreSQL database, an execution running on one of them when
  the database hangs for twice ``stale_after``, and comes back for the other process first:
  its reaper does not take the execution over (staleness counts from the database's return),
  and the owner completes it once the database answers it too, every model called once.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qa import services
from qa.client import ApiClient
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Held, Reply
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


# Ownership fast enough to go stale several times over during the outage: a beat every
# 0.2 s, abandoned after 4 s, reapers sweeping every 0.3 s; the breaker probing every 0.2 s.
OWNERSHIP = {
    "RENUM_EXECUTIONS__HEARTBEAT_SECONDS": "0.2",
    "RENUM_EXECUTIONS__STALE_AFTER_SECONDS": "4",
    "RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS": "0.3",
    **fs.BREAKER_FAST,
}
OUTAGE_SECONDS = 8.0  # twice stale_after
# How much sooner the database comes back for the second process than for the owner: many
# reaper sweeps, well within stale_after.
HEAD_START_SECONDS = 1.5


def breaker_open(server: LaunchedBackend) -> bool:
    return fs.counter(server.base_url, "renum_database_breaker_open") == 1


def test_after_an_outage_another_process_does_not_take_over_a_running_execution(
    launch_degraded: Callable[..., LaunchedBackend],
    postgres_database: tuple[str, int],
    fake_openai: FakeOpenAI,
) -> None:
    """Each process reaches PostgreSQL through its own fault proxy. The database comes back
    for the second process first, while the owner's heartbeat is many times stale_after old
    and the owner cannot beat yet: a reaper counting staleness from the last heartbeat would
    take the execution over at its next sweep (and call step 2's model again)."""
    name, port = postgres_database
    release = threading.Event()
    # Step 1 answers at once; step 2's answer is held until the database is away.
    fake_openai.script(Reply("first"), Held(release, Reply("second")), Reply("third"))
    with FaultProxy("127.0.0.1", port) as owners, FaultProxy("127.0.0.1", port) as others:
        owner = launch_degraded(
            RENUM_DATABASE__URL=fs.url_via(services.postgres().url, owners.port, name),
            **OWNERSHIP,
        )
        wait_for(lambda: fs.ready_status(owner.base_url) == 200, what="the owner ready")
        with ApiClient(owner.base_url, timeout=15.0) as admin:
            admin.login(owner.admin_email, owner.admin_password)
            path = fs.start_model_team(admin, fake_openai.base_url, "two")
            wait_for(lambda: fake_openai.in_flight == 1, what="step 2's model call")
            # The second process starts while the owner drives the execution.
            other = launch_degraded(
                RENUM_DATABASE__URL=fs.url_via(services.postgres().url, others.port, name),
                **OWNERSHIP,
            )
            wait_for(lambda: fs.ready_status(other.base_url) == 200, what="the second ready")

            owners.hang()
            others.hang()
            for server in (owner, other):
                wait_for(lambda s=server: breaker_open(s), what="both breakers open")
            release.set()  # step 2 ends while the database is away: its commit waits
            wait_for(lambda: "execution_paused" in owner.log_text(), what="paused")
            time.sleep(OUTAGE_SECONDS)  # the owner's heartbeat twice stale_after old
            others.pass_through()
            wait_for(lambda: not breaker_open(other), what="the database back for the second")
            time.sleep(HEAD_START_SECONDS)  # its reaper sweeps several times meanwhile
            owners.pass_through()
            wait_for(
                lambda: "cache-status" not in admin.get(path).headers, what="fresh answers again"
            )

            final = expect(admin.get(f"{path}?wait=60"), 200)
            assert final["status"] == "completed", final
            assert [step["output"] for step in final["steps"]] == ["first", "second", "third"]
            assert [step["attempts"] for step in final["steps"]] == [1, 1, 1]
            types = [event["type"] for event in expect(admin.get(f"{path}/events"), 200)]
        calls = [r for r in fake_openai.requests if r.path.endswith("/chat/completions")]
        assert len(calls) == 3  # no model called twice
        assert "execution_resumed" not in types
        assert "execution_continued" in owner.log_text()
        # Both reapers swept through the outage and after it, and took nothing over.
        for server in (owner, other):
            log = server.log_text()
            since_the_outage = log[log.index('"database_unavailable"') :]
            assert "reaper_failed" in since_the_outage
            assert "executions_reaped" not in since_the_outage
            assert "Traceback" not in log
