"""Helpers of the dependency-fault tests (``test_health_faults.py`` and the outage drills in
``suites/drills``): backends launched degraded with fast health checks, a fresh PostgreSQL
database, URLs through a fault proxy, the health reports, and the probes' timing compared as
a ratio between two moments of the same test.

Fixtures live here too; a test module binds the ones it uses by assignment
(``launch_degraded = faults_support.launch_degraded``).
"""

from __future__ import annotations

import functools
import json
import re
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from qa import services
from qa.client import API, ApiClient
from qa.factories import create_agent, expect
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

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
# The database manager's breaker, fast: a probe every 0.2 s, each given at most 3 s, so the
# breaker opens within a few seconds of a hang, and a busy machine (a probe slower than a
# second) does not open it before; clients are told to come back after 3 s.
BREAKER_FAST = {
    "RENUM_DATABASE_MANAGER__BREAKER_PROBE_SECONDS": "0.2",
    "RENUM_DATABASE__CONNECT_TIMEOUT_SECONDS": "3",
    "RENUM_DATABASE_MANAGER__RETRY_AFTER_SECONDS": "3",
}
# The probes' median time while dependencies hang, against their median while all is well on
# the same server. Probes serve the monitor's last results: the two are alike (a busy machine
# slows both). A probe that waited for a hung check would wait for its 1 s timeout: hundreds of
# times a probe's few milliseconds.
PROBE_FACTOR = 25


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


def counter(base_url: str, name: str) -> float:
    """An unlabelled counter or gauge as ``/metrics`` serves it (0 when absent)."""
    text = httpx.get(f"{base_url}/metrics", timeout=15.0).text
    found = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def start_model_team(admin: ApiClient, model_url: str, name: str) -> str:
    """A team of three agents on the model server at ``model_url`` (one attempt per call),
    its execution started with the prompt "go": the execution's path."""
    agents = [
        create_agent(
            admin,
            f"model-{n}",
            provider="openai",
            model="gpt-4o-mini",
            base_url=model_url,
            retry={"max_attempts": 1},
        )["id"]
        for n in range(3)
    ]
    team = expect(admin.post(f"{API}/teams", json={"name": name, "agent_ids": agents}), 201)
    created = admin.post(f"{API}/teams/{team['id']}/executions", json={"prompt": "go"})
    return f"{API}/executions/{expect(created, 202)['id']}"


def details(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/health/dependencies", headers=TOKEN, timeout=5)


def entry(body: dict[str, Any], key: str) -> dict[str, Any]:
    return body["checks"][key][0]


# The harness's poller at this module's pace: checks every 0.3 s, failures after a few of them.
wait_for = functools.partial(wait_until, timeout=20.0, interval=0.1)


def ready_status(base_url: str) -> int:
    return httpx.get(f"{base_url}/health/ready", timeout=5).status_code


def probe_times(base_url: str, rounds: int = 5) -> list[float]:
    """Every probe, over several rounds: each answers (200 or 503); their times in seconds."""
    times = []
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for _ in range(rounds):
            for path, headers in [
                ("/health/live", {}),
                ("/health/ready", {}),
                ("/health/dependencies", {}),
                ("/health/dependencies", TOKEN),
            ]:
                start = time.perf_counter()
                response = http.get(path, headers=headers)
                times.append(time.perf_counter() - start)
                assert response.status_code in (200, 503), path
    return times


def assert_probes_unaffected(hung: list[float], healthy: list[float]) -> None:
    """The probes answered as fast while dependencies hung as while all was well (medians,
    within ``PROBE_FACTOR``): they did not wait for the hung checks."""
    ratio = statistics.median(hung) / statistics.median(healthy)
    assert ratio <= PROBE_FACTOR, f"probes at {ratio:.1f}x their healthy time while hung"
