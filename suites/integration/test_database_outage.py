"""A database outage under a running backend, through ``qa/fault_proxy.py`` in front of a fresh
PostgreSQL database (never by stopping the shared server): PostgreSQL hung, refusing and cut.

While it is away, API calls answer 503 ``application/problem+json`` with ``Retry-After``; once
the circuit breaker is open they are refused without touching the database (the breaker's own
count of refused checkouts grows with them); a write attempted during the outage changed
nothing; readiness turns 503 and liveness stays 200; and when the database answers again the
API serves reads and writes without a restart. A team execution running through the outage
pauses and completes afterwards in the same process, with its step's result kept (the model
is not called again), no resume, and every event in an unbroken sequence. The same outage with
the database manager switched off is the base behaviour: no breaker, and its figures stay at
zero.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import faults_support as fs
import httpx
import pytest
from faults_support import ready_status, url_via

from qa import services
from qa.client import ApiClient
from qa.factories import create_agent, expect
from qa.fake_openai import FakeOpenAI, Held, Reply
from qa.fault_proxy import FaultProxy
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

# A long scenario: run by `nox -s drills`, not the default run (qa.plugin's DRILL).
pytestmark = pytest.mark.drill

launch_degraded = fs.launch_degraded
postgres_database = fs.postgres_database

API = "/api/v1"
OUTAGE = fs.BREAKER_FAST
# No request may hang: each of the test's requests gives up after this long, and fails the test.
REQUEST_TIMEOUT = 15.0


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "3"
    body = response.json()
    assert body["type"].endswith("/database-unavailable")
    assert "Traceback" not in response.text


def wait_for_503(admin: ApiClient) -> httpx.Response:
    answers: list[httpx.Response] = []

    def refused() -> bool:
        answers.append(admin.get(f"{API}/agents"))
        return answers[-1].status_code == 503

    wait_until(refused, timeout=30.0, interval=0.1, what="API calls answered 503")
    return answers[-1]


def served_fresh(admin: ApiClient, path: str) -> bool:
    """Answered by the database: a 200 that is not a last-known answer kept from before."""
    answer = admin.get(path)
    return answer.status_code == 200 and "cache-status" not in answer.headers


def launch(
    launcher: Callable[..., LaunchedBackend], name: str, port: int, **env: str
) -> tuple[LaunchedBackend, ApiClient]:
    server = launcher(
        RENUM_DATABASE__URL=url_via(services.postgres().url, port, name), **{**OUTAGE, **env}
    )
    fs.wait_for(lambda: ready_status(server.base_url) == 200, what="ready through the proxy")
    admin = ApiClient(server.base_url, timeout=REQUEST_TIMEOUT)
    admin.login(server.admin_email, server.admin_password)
    return server, admin


def test_hung_database_answers_503_at_once_then_recovers_without_a_restart(
    launch_degraded: Callable[..., LaunchedBackend],
    postgres_database: tuple[str, int],
    record_property: Callable[[str, object], None],
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        server, admin = launch(launch_degraded, name, proxy.port)
        before = create_agent(admin, "before the outage")["name"]
        # Counted from here: on a starved machine a start-up probe may already have timed out.
        outages = fs.counter(server.base_url, "renum_database_outages")

        # Measured, never asserted on: the figures the README reports (docs/database.md).
        hung_at = time.perf_counter()
        proxy.hang()
        assert_database_unavailable(wait_for_503(admin))
        to_first_503 = time.perf_counter() - hung_at
        # The first refusal answers 503 by itself; the breaker opens on the next failed probe.
        fs.wait_for(
            lambda: fs.counter(server.base_url, "renum_database_outages") == outages + 1,
            what="breaker open",
        )
        assert fs.counter(server.base_url, "renum_database_breaker_open") == 1
        # Open: each call is refused before it reaches the pool (counted, never waited for).
        refused_before = fs.counter(server.base_url, "renum_database_refused_requests")
        refusals = []
        for _ in range(5):
            started = time.perf_counter()
            assert_database_unavailable(admin.get(f"{API}/agents"))
            refusals.append(time.perf_counter() - started)
        write = admin.post(f"{API}/agents", json={"name": "during the outage", "model": "m"})
        assert_database_unavailable(write)
        assert fs.counter(server.base_url, "renum_database_refused_requests") >= refused_before + 6
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200
        fs.wait_for(lambda: ready_status(server.base_url) == 503, what="readiness 503")

        recovered_at = time.perf_counter()
        proxy.pass_through()
        written: list[httpx.Response] = []

        def written_again() -> bool:
            body = {"name": "after the outage", "provider": "builtin", "model": "echo"}
            written.append(admin.post(f"{API}/agents", json=body))
            return written[-1].status_code == 201

        fs.wait_for(written_again, what="a write accepted again")
        to_first_write = time.perf_counter() - recovered_at
        names = {agent["name"] for agent in admin.get(f"{API}/agents").json()["items"]}
        assert names == {before, "after the outage"}  # the refused write changed nothing
        for key, value in {
            "outage_to_first_503_s": to_first_503,
            "refused_503_median_ms": statistics.median(refusals) * 1000,
            "recovery_to_first_write_s": to_first_write,
        }.items():
            record_property(key, round(value, 3))
            print(f"{key}: {value:.3f}")
        assert fs.counter(server.base_url, "renum_database_breaker_open") == 0
        fs.wait_for(lambda: ready_status(server.base_url) == 200, what="ready again")
        log = server.log_text()
        assert "database_unavailable" in log
        assert "database_available" in log
        assert "Traceback" not in log
        admin.close()
        server.stop()


def test_refused_and_cut_connections_answer_503_and_recover(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        server, admin = launch(launch_degraded, name, proxy.port)
        outages = fs.counter(server.base_url, "renum_database_outages")
        proxy.refuse()
        assert_database_unavailable(wait_for_503(admin))
        # The first refusal answers 503 by itself; the breaker opens on the next failed probe.
        fs.wait_for(
            lambda: fs.counter(server.base_url, "renum_database_outages") == outages + 1,
            what="breaker open",
        )
        proxy.pass_through()
        fs.wait_for(lambda: served_fresh(admin, f"{API}/agents"), what="served again")

        proxy.cut()  # live pooled connections reset under a healthy database
        answers = [admin.get(f"{API}/agents").status_code for _ in range(5)]
        assert set(answers) <= {200, 503}, answers  # never a 500, never a hang
        fs.wait_for(lambda: served_fresh(admin, f"{API}/agents"), what="after the cut")
        create_agent(admin, "after the cut")
        admin.close()
        server.stop()


def test_switched_off_the_base_layer_waits_and_nothing_is_counted(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        server, admin = launch(
            launch_degraded, name, proxy.port, RENUM_DATABASE_MANAGER__ENABLED="false"
        )
        proxy.refuse()
        answer = admin.get(f"{API}/agents")
        assert answer.status_code == 500  # the base layer's answer to a lost database
        assert answer.headers["content-type"] == "application/problem+json"
        assert fs.counter(server.base_url, "renum_database_outages") == 0
        assert "renum_database_breaker_open" not in httpx.get(f"{server.base_url}/metrics").text
        proxy.pass_through()
        fs.wait_for(lambda: served_fresh(admin, f"{API}/agents"), what="served again")
        admin.close()
        server.stop()


def test_an_execution_pauses_through_the_outage_and_completes_without_a_resume(
    launch_degraded: Callable[..., LaunchedBackend],
    postgres_database: tuple[str, int],
    fake_openai: FakeOpenAI,
) -> None:
    name, port = postgres_database
    release = threading.Event()
    # Step 1 answers at once; step 2's answer is held until the database is away.
    fake_openai.script(Reply("first"), Held(release, Reply("second")), Reply("third"))
    with FaultProxy("127.0.0.1", port) as proxy:
        # Heartbeats every 0.2 s, stale after 1 s: an outage of a few seconds would make the
        # execution look abandoned if staleness were not counted from the database's return.
        server, admin = launch(
            launch_degraded,
            name,
            proxy.port,
            RENUM_EXECUTIONS__HEARTBEAT_SECONDS="0.2",
            RENUM_EXECUTIONS__STALE_AFTER_SECONDS="1",
            RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS="0.3",
        )
        url = fs.start_model_team(admin, fake_openai.base_url, "through")
        wait_until(lambda: fake_openai.in_flight == 1, timeout=30, what="step 2's model call")

        proxy.hang()
        wait_for_503(admin)
        release.set()  # step 2 ends while the database is away: its commit must wait
        wait_until(lambda: "execution_paused" in server.log_text(), timeout=30, what="paused")
        # Longer than stale_after: a reaper counting from the last heartbeat would take over.
        wait_until(
            lambda: fs.counter(server.base_url, "renum_database_refused_requests") > 10,
            timeout=30,
            what="the outage going on",
        )
        proxy.pass_through()
        fs.wait_for(lambda: served_fresh(admin, url), what="served again")

        final = expect(admin.get(f"{url}?wait=30"), 200)
        assert final["status"] == "completed", final
        assert final["result"] == "third"
        assert [step["attempts"] for step in final["steps"]] == [1, 1, 1]
        assert [step["output"] for step in final["steps"]] == ["first", "second", "third"]
        calls = [r for r in fake_openai.requests if r.path.endswith("/chat/completions")]
        assert len(calls) == 3  # no model call made twice
        events = expect(admin.get(f"{url}/events"), 200)
        assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
        types = [event["type"] for event in events]
        assert "execution_resumed" not in types
        assert types.count("step_completed") == 3
        assert types[-1] == "execution_completed"
        log = server.log_text()
        assert "execution_continued" in log
        assert "executions_reaped" not in log
        assert "execution_crashed" not in log
        admin.close()
        server.stop()
