"""Reads answered from their last known state during a database outage, on a real backend in
front of a fresh PostgreSQL database through ``qa/fault_proxy.py`` (never by stopping the shared
server).

Before the outage the backend's admin reads an agent and the agent list, and the owner of
another tenant reads theirs. With PostgreSQL hung and the circuit breaker open, those reads
answer 200 with the same bodies, marked with ``Age`` and ``Cache-Status`` (RFC 9211); the same
paths asked with another credential (another tenant's owner, or the same admin logged in again)
and every write answer the usual 503; and once the database answers again, reads are fresh:
no ``Cache-Status``, no ``Age``.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable

import faults_support as fs
import httpx
from faults_support import ready_status, url_via
from prometheus_client.parser import text_string_to_metric_families

from qa import services
from qa.client import ApiClient
from qa.factories import create_agent, tenant_with_owner
from qa.fault_proxy import FaultProxy
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

launch_degraded = fs.launch_degraded
postgres_database = fs.postgres_database

API = "/api/v1"
OUTAGE = fs.BREAKER_FAST
REQUEST_TIMEOUT = 15.0
HIT = re.compile(r"^renum; hit; ttl=(0|-[0-9]+); detail=database-unavailable$")
MISS = "renum; fwd=miss; detail=database-unavailable"


def assert_refused(response: httpx.Response, cache_status: str | None = MISS) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "3"
    assert response.json()["type"].endswith("/database-unavailable")
    assert "age" not in response.headers
    assert response.headers.get("cache-status") == cache_status


def assert_replayed(response: httpx.Response, before: httpx.Response) -> int:
    """The answer kept from ``before``, marked; its age in seconds."""
    assert response.status_code == 200, response.text
    assert response.content == before.content
    assert response.headers["content-type"] == before.headers["content-type"]
    assert HIT.match(response.headers["cache-status"]), response.headers["cache-status"]
    age = int(response.headers["age"])
    assert response.headers["cache-status"].split("; ")[2] == f"ttl={-age}"
    assert response.headers["x-request-id"]  # the base middleware still applies
    assert "warning" not in response.headers
    return age


def last_known_counts(base_url: str) -> dict[str, float]:
    """``renum_database_last_known_reads_total`` by outcome, as ``/metrics`` serves it."""
    text = httpx.get(f"{base_url}/metrics", timeout=REQUEST_TIMEOUT).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "renum_database_last_known_reads"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def assert_fresh(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert "cache-status" not in response.headers
    assert "age" not in response.headers


def test_kept_reads_answer_during_an_outage_for_their_own_credential_only(
    launch_degraded: Callable[..., LaunchedBackend], postgres_database: tuple[str, int]
) -> None:
    name, port = postgres_database
    with FaultProxy("127.0.0.1", port) as proxy:
        server = launch_degraded(
            RENUM_DATABASE__URL=url_via(services.postgres().url, proxy.port, name), **OUTAGE
        )
        fs.wait_for(lambda: ready_status(server.base_url) == 200, what="ready through the proxy")
        admin = ApiClient(server.base_url, timeout=REQUEST_TIMEOUT)
        admin.login(server.admin_email, server.admin_password)
        again = ApiClient(server.base_url, timeout=REQUEST_TIMEOUT)  # the admin, logged in again
        again.login(server.admin_email, server.admin_password)
        _tenant, owner = tenant_with_owner(
            server.base_url, server.admin_email, server.admin_password
        )
        agent = create_agent(admin, "kept")
        create_agent(owner, "theirs")
        agent_path = f"{API}/agents/{agent['id']}"

        one = admin.get(agent_path)
        listed = admin.get(f"{API}/agents?limit=20&offset=0")
        theirs = owner.get(f"{API}/agents")
        for answer in (one, listed, theirs):
            assert_fresh(answer)
        assert listed.content != theirs.content

        proxy.hang()
        # An uncached read (a new query each time, so no answer is ever kept for it).
        polls = itertools.count()

        def refused() -> bool:
            answer = admin.get(f"{API}/teams?offset={next(polls)}")
            return answer.status_code == 503

        wait_until(refused, timeout=30.0, interval=0.1, what="an uncached read answered 503")

        first_age = assert_replayed(admin.get(agent_path), one)
        assert_replayed(admin.get(f"{API}/agents?offset=0&limit=20"), listed)  # any order
        assert_replayed(owner.get(f"{API}/agents"), theirs)  # each credential its own

        # Another credential, the same paths: never the admin's answers.
        assert_refused(owner.get(agent_path))
        assert_refused(again.get(agent_path))
        assert_refused(again.get(f"{API}/agents?limit=20&offset=0"))
        # A read never made before, and writes: the usual 503.
        assert_refused(admin.get(f"{API}/agents?limit=5"))
        assert_refused(admin.post(f"{API}/agents", json={"name": "during", "model": "echo"}), None)
        assert_refused(admin.delete(agent_path), None)

        time.sleep(1.1)
        assert assert_replayed(admin.get(agent_path), one) > first_age
        counts = last_known_counts(server.base_url)
        assert counts["served"] == 4  # the replays above
        assert counts["missed"] >= 4  # the refused reads (and the polls after the breaker opened)
        assert counts["stored"] >= 3

        proxy.pass_through()
        fs.wait_for(
            lambda: "cache-status" not in admin.get(agent_path).headers, what="fresh answers"
        )
        fresh = admin.get(agent_path)
        assert_fresh(fresh)
        assert fresh.json() == one.json()  # the refused delete changed nothing
        assert_fresh(again.get(agent_path))
        names = {item["name"] for item in admin.get(f"{API}/agents").json()["items"]}
        assert "during" not in names
        log = server.log_text()
        assert "Traceback" not in log
        for client in (admin, again, owner):
            client.close()
        server.stop()
