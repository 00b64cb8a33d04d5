"""Failover drill: the PostgreSQL primary dies under load, its synchronous replica is promoted,
and Renum rides through on its own.

A Patroni cluster of two nodes (``qa.ha_cluster``: a private etcd, a leader and a synchronous
streaming replica, all on loopback) holds the database; the backend reaches it through a
multi-host URL with ``target_session_attrs=read-write``, so each new connection goes to
whichever node takes writes. Writers create agents through the API back to back while a
three-step pipeline runs against the fake model server, its second step's answer held. Then the
leader's machine "dies": its Patroni, its postmaster and every backend of it are SIGKILLed at
once, and the held answer is released, so the step's commit falls in the outage. Patroni
promotes the replica once the dead leader's key expires.

What is asserted is order, counts and states: the synchronous replica is the new leader; the
same backend process serves writes again without a restart; every write the API acknowledged
(201), before the kill and after it, is on the promoted node (synchronous replication: no
acknowledged commit lost); no request failed before the kill; and the execution pauses, then
continues from its last committed step and completes with each step run once (every model
called once). What is measured and recorded (JUnit properties, printed): the seconds from the
kill to the promotion and to the first acknowledged write sent after the kill, the requests
that failed meanwhile (each writer pausing ``RETRY_PAUSE_SECONDS`` after a failure, as a client
that retries promptly would), the writes acknowledged and lost, and how long the execution
waited. The waits are bounded, never timed.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from qa.client import API, ApiClient
from qa.factories import create_agent, expect, tenant_with_owner, unique
from qa.fake_openai import FakeOpenAI, Held, Slow
from qa.ha_cluster import PatroniCluster
from qa.launcher import LaunchedBackend
from qa.plugin import LaunchBackend
from qa.polling import wait_until

WRITERS = 4
# Writes acknowledged before the kill, and after the first one since, before writing stops.
WRITES_BEFORE = 40
WRITES_AFTER = 40
RETRY_PAUSE_SECONDS = 0.1
REQUEST_TIMEOUT_SECONDS = 30.0
PATIENCE = 120.0  # each wait is bounded by this, never timed
# The database manager's breaker, fast: a probe every 0.2 s, each given at most 3 s, clients
# told to come back after 3 s.
BREAKER_FAST = {
    "RENUM_DATABASE_MANAGER__BREAKER_PROBE_SECONDS": "0.2",
    "RENUM_DATABASE__CONNECT_TIMEOUT_SECONDS": "3",
    "RENUM_DATABASE_MANAGER__RETRY_AFTER_SECONDS": "3",
}
ECHO = Slow(0)  # the fake's default answer: "echo: " and the step's input


@dataclass(frozen=True)
class Attempt:
    """One write: when it was sent and answered, its status (or the transport error's name),
    and the agent's id when it was acknowledged."""

    sent: float
    answered: float
    outcome: int | str
    agent_id: str | None


class Writer(threading.Thread):
    """Creates agents back to back until stopped, recording every attempt; after a failure it
    pauses ``RETRY_PAUSE_SECONDS`` before the next one."""

    def __init__(self, client: ApiClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        body = {"provider": "builtin", "model": "echo"}
        while not self.stopping.is_set():
            sent = time.monotonic()
            outcome: int | str
            agent_id = None
            try:
                response = self.client.post(
                    f"{API}/agents",
                    json={**body, "name": unique("write")},
                    timeout=REQUEST_TIMEOUT_SECONDS,
                )
                outcome = response.status_code
                if outcome == 201:
                    agent_id = str(response.json()["id"])
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.attempts.append(Attempt(sent, time.monotonic(), outcome, agent_id))
            if agent_id is None:
                time.sleep(RETRY_PAUSE_SECONDS)


def acknowledged(writers: list[Writer]) -> list[Attempt]:
    return sorted(
        (a for w in writers for a in list(w.attempts) if a.agent_id is not None),
        key=lambda a: a.answered,
    )


def failed(writers: list[Writer]) -> list[Attempt]:
    return sorted(
        (a for w in writers for a in list(w.attempts) if a.agent_id is None),
        key=lambda a: a.answered,
    )


@pytest.fixture
def cluster() -> Iterator[PatroniCluster]:
    """A leader and a synchronous replica, with an empty ``renum`` database made on the
    leader; everything stopped and removed afterwards."""
    with PatroniCluster(size=2) as started:
        leader, _ = started.wait_for_sync_replica()
        leader.query("CREATE DATABASE renum")
        yield started


def pipeline(owner: ApiClient, model_url: str) -> dict[str, Any]:
    """A three-step pipeline of agents on the model server at ``model_url``, one attempt per
    call: each step's input is the previous step's output."""
    agents = [
        create_agent(
            owner,
            f"model-{n}",
            provider="openai",
            model="gpt-4o-mini",
            base_url=model_url,
            retry={"max_attempts": 1},
            timeout_seconds=PATIENCE,
        )
        for n in range(3)
    ]
    workflow = {
        "strategy": "pipeline",
        "steps": [{"id": f"s{n}", "agent_id": a["id"]} for n, a in enumerate(agents)],
    }
    body = {"name": unique("failover"), "agent_ids": [a["id"] for a in agents]}
    team: dict[str, Any] = expect(
        owner.post(f"{API}/teams", json={**body, "workflow": workflow}), 201
    )
    return team


def logged(backend: LaunchedBackend, event: str) -> list[dict[str, Any]]:
    """The backend's JSON log entries of ``event``."""
    entries = []
    for line in backend.log_text().splitlines():
        if event not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            entries.append(entry)
    return entries


def test_the_synchronous_replica_takes_over_and_renum_rides_through(
    cluster: PatroniCluster,
    launch_backend: LaunchBackend,
    fake_openai: FakeOpenAI,
    record_property: Callable[[str, object], None],
) -> None:
    fake = fake_openai
    old_leader, replica = cluster.wait_for_sync_replica()
    backend = launch_backend(
        "postgresql", database_url=cluster.url("renum"), extra_env=BREAKER_FAST
    )
    assert backend.process is not None
    pid = backend.process.pid
    tenant, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    clients = [
        ApiClient(backend.base_url).login(tenant.owner.email, tenant.owner.password)
        for _ in range(WRITERS)
    ]
    writers = [Writer(client) for client in clients]
    try:
        team = pipeline(owner, fake.base_url)
        release = threading.Event()
        fake.script(ECHO, Held(release), ECHO)
        started = owner.post(f"{API}/teams/{team['id']}/executions", json={"prompt": "go"})
        path = f"{API}/executions/{expect(started, 202)['id']}"

        def second_step_in_flight() -> bool:
            steps = {s["step_key"]: s["status"] for s in expect(owner.get(path), 200)["steps"]}
            return steps.get("s0") == "completed" and steps.get("s1") == "running"

        wait_until(second_step_in_flight, PATIENCE, what="step s1 running", interval=0.1)
        wait_until(lambda: fake.in_flight == 1, PATIENCE, what="step s1's model call")
        for writer in writers:
            writer.start()
        wait_until(
            lambda: len(acknowledged(writers)) >= WRITES_BEFORE, PATIENCE, what="writes under way"
        )

        killed = time.monotonic()
        cluster.kill(old_leader)
        release.set()  # step s1 ends while the database is away: its commit must wait
        new_leader = cluster.wait_for_leader(other_than=old_leader)
        promoted = time.monotonic()

        def writes_again() -> list[Attempt]:
            since = [a for a in acknowledged(writers) if a.sent > killed]
            return since if len(since) >= WRITES_AFTER else []

        first_after = wait_until(writes_again, PATIENCE, what="writes again", interval=0.1)[0]
        for writer in writers:
            writer.stopping.set()
        waited = owner.get(path, params={"wait": PATIENCE}, timeout=PATIENCE + 10)
        final = expect(waited, 200)
        events = [e["type"] for e in expect(owner.get(f"{path}/events"), 200)]
    finally:
        for writer in writers:
            writer.stopping.set()
        for writer in writers:
            if writer.is_alive():
                writer.join(REQUEST_TIMEOUT_SECONDS + 5)
        for client in [owner, *clients]:
            client.close()

    written = acknowledged(writers)
    failures = failed(writers)
    present = {row[0] for row in new_leader.query("SELECT id::text FROM agents", database="renum")}
    lost = [a.agent_id for a in written if a.agent_id not in present]
    continued = logged(backend, "execution_continued")
    to_writes = first_after.answered - killed
    paused = float(continued[0]["paused_seconds"]) if continued else -1.0
    for name, value in (
        ("drill_failover_promotion_seconds", round(promoted - killed, 3)),
        ("drill_failover_writes_again_seconds", round(to_writes, 3)),
        ("drill_failover_failed_requests", len(failures)),
        ("drill_failover_writes_acknowledged", len(written)),
        ("drill_failover_writes_lost", len(lost)),
        ("drill_failover_execution_paused_seconds", paused),
    ):
        record_property(name, value)
    outcomes = collections.Counter(str(a.outcome) for a in failures)
    print(
        f"\nPostgreSQL failover: replica promoted {promoted - killed:.2f} s after the kill, "
        f"writes acknowledged again after {to_writes:.2f} s; {len(failures)} requests failed "
        f"({dict(outcomes)}); {len(written)} writes acknowledged, {len(lost)} lost; the "
        f"execution paused {paused:.2f} s"
    )

    # The synchronous replica was promoted; the backend process is the one started before.
    assert new_leader is replica
    assert backend.process.poll() is None
    assert backend.process.pid == pid
    # Every acknowledged write, before the kill and after it, is on the promoted node.
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"
    assert any(a.sent < killed for a in written)
    # Nothing failed before the kill: every failure belongs to the failover.
    assert all(a.answered > killed for a in failures), failures[:5]
    # The execution continued from its last committed step: s1's result, held in memory
    # through the outage, committed once the database answered; each model called once.
    assert logged(backend, "execution_paused")
    assert continued
    assert final["status"] == "completed", final
    steps = {s["step_key"]: s for s in final["steps"]}
    assert [steps[f"s{n}"]["attempts"] for n in range(3)] == [1, 1, 1]
    assert final["result"] == "echo: " * 3 + "go"
    calls = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert len(calls) == 3
    assert "execution_resumed" not in events
    assert events[-1] == "execution_completed", events
