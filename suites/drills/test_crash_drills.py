"""Crash drills: the backend killed with SIGKILL again and again while executions run, on
SQLite and on PostgreSQL, and replaced each time by a new process on the same database.

The default run keeps one kill per database (``suites/integration/test_crash_recovery.py``);
these drills go further and take minutes, so they run in the ``drills`` session only:

- a six-step pipeline killed three times (the most resumes allowed): twice in different
  steps, once more in a step already resumed once; it completes, each finished step ran once,
  each interrupted one ran again, and every output passed on is the one of the final run;
- parallel steps all in flight at a kill: each runs again, none is lost or doubled;
- an execution killed once more than its resume limit fails as ``abandoned`` instead of
  running for ever.

Every kill lands while a model call is in flight (its answer is held by the fake server), so
no drill depends on timing; the waits are only bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qa.client import API, ApiClient
from qa.factories import Member, create_agent, expect, tenant_with_owner
from qa.fake_openai import FakeOpenAI, Held, Slow, Step
from qa.launcher import LaunchedBackend
from qa.plugin import LaunchBackend
from qa.polling import wait_until

FAST_RECOVERY = {
    "RENUM_EXECUTIONS__HEARTBEAT_SECONDS": "0.2",
    "RENUM_EXECUTIONS__STALE_AFTER_SECONDS": "1",
    "RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS": "0.3",
}
MAX_RESUMES = 3  # the default of RENUM_EXECUTIONS__MAX_RESUMES
ECHO = Slow(0)  # the fake's default answer: "echo: " and the step's input


def held() -> Held:
    """A model call whose answer never comes: the kill lands while it is in flight."""
    return Held(threading.Event())


class Drill:
    """One launched backend that a drill kills and respawns, and its tenant owner."""

    def __init__(self, backend: LaunchedBackend, fake: FakeOpenAI) -> None:
        self.backend = backend
        self.fake = fake
        tenant, self.owner = tenant_with_owner(
            backend.base_url, backend.admin_email, backend.admin_password
        )
        self.member: Member = tenant.owner
        self.kills = 0

    def team(self, strategy: str, steps: int) -> dict[str, Any]:
        agents = [
            create_agent(
                self.owner,
                f"model-{n}",
                provider="openai",
                model="gpt-4o-mini",
                base_url=self.fake.base_url,
                retry={"max_attempts": 1},
                timeout_seconds=60,
            )
            for n in range(steps)
        ]
        workflow = {
            "strategy": strategy,
            "steps": [{"id": f"s{n}", "agent_id": a["id"]} for n, a in enumerate(agents)],
        }
        body = {"name": f"drill-{strategy}", "agent_ids": [a["id"] for a in agents]}
        return expect(self.owner.post(f"{API}/teams", json={**body, "workflow": workflow}), 201)

    def start(self, team: dict[str, Any], prompt: str) -> str:
        url = f"{API}/teams/{team['id']}/executions"
        return str(expect(self.owner.post(url, json={"prompt": prompt}), 202)["id"])

    def execution(self, execution_id: str, wait: float = 0) -> dict[str, Any]:
        params = {"wait": wait} if wait else {}
        read: dict[str, Any] = expect(
            self.owner.get(f"{API}/executions/{execution_id}", params=params), 200
        )
        return read

    def events(self, execution_id: str) -> list[dict[str, Any]]:
        url = f"{API}/executions/{execution_id}/events"
        found: list[dict[str, Any]] = expect(self.owner.get(url, params={"limit": 1000}), 200)
        return found

    def kill_when_held(self, execution_id: str, running: set[str], calls: int = 1) -> None:
        """Wait until exactly the ``running`` steps run, their ``calls`` model calls held by
        the fake, then SIGKILL the server: nothing is shut down cleanly."""

        def ready() -> bool:
            steps = self.execution(execution_id)["steps"]
            now = {s["step_key"] for s in steps if s["status"] == "running"}
            return now == running and self.fake.in_flight == calls

        wait_until(ready, timeout=60, what=f"steps {sorted(running)} in flight", interval=0.1)
        self.backend.kill()
        self.kills += 1
        self.owner.close()
        self.fake.reset()  # the killed server's held calls are gone with it

    def respawn(self, *script: Step) -> None:
        """A new server process on the same database, the fake scripted for what comes next."""
        self.fake.script(*script)
        self.backend.respawn()
        self.owner = ApiClient(self.backend.base_url).login(self.member.email, self.member.password)

    def close(self) -> None:
        self.owner.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def drill(
    request: pytest.FixtureRequest, launch_backend: LaunchBackend, fake_openai: FakeOpenAI
) -> Iterator[Drill]:
    backend = launch_backend(request.param, extra_env=FAST_RECOVERY)
    running = Drill(backend, fake_openai)
    yield running
    running.close()


def assert_events_are_whole(events: list[dict[str, Any]], resumes: int, last: str) -> None:
    types = [e["type"] for e in events]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), types
    assert types.count("execution_started") == 1, types
    assert types.count("execution_resumed") == resumes, types
    assert types[-1] == last, types


def test_a_pipeline_killed_three_times_completes_with_every_step_once(drill: Drill) -> None:
    fake = drill.fake
    team = drill.team("pipeline", steps=6)
    # s0 answers, s1 is held: kill one.
    fake.script(ECHO, held())
    execution_id = drill.start(team, "go")
    drill.kill_when_held(execution_id, {"s1"})
    # s1 again, s2, then s3 held: kill two.
    drill.respawn(ECHO, ECHO, held())
    drill.kill_when_held(execution_id, {"s3"})
    # s3 once more, held again: kill three, in a step that was already resumed once.
    drill.respawn(held())
    drill.kill_when_held(execution_id, {"s3"})
    # The last resume allowed: everything left answers.
    drill.respawn(ECHO, ECHO, ECHO)

    final = drill.execution(execution_id, wait=60)
    assert final["status"] == "completed", final
    steps = {s["step_key"]: s for s in final["steps"]}
    assert [steps[f"s{n}"]["attempts"] for n in range(6)] == [1, 2, 1, 3, 1, 1]
    assert all(s["status"] == "completed" for s in steps.values())
    # Each step's input is the previous step's output: the chain is whole, nothing doubled.
    for n in range(6):
        expected_input = "go" if n == 0 else steps[f"s{n - 1}"]["output"]
        assert steps[f"s{n}"]["input"] == expected_input
        assert steps[f"s{n}"]["output"] == f"echo: {expected_input}"
    assert final["result"] == "echo: " * 6 + "go"
    assert_events_are_whole(drill.events(execution_id), resumes=3, last="execution_completed")
    completed = [
        e["data"]["step"] for e in drill.events(execution_id) if e["type"] == "step_completed"
    ]
    assert completed == [f"s{n}" for n in range(6)], "a step completed twice or out of order"


def test_parallel_steps_in_flight_at_a_kill_all_run_again(drill: Drill) -> None:
    fake = drill.fake
    team = drill.team("parallel", steps=3)
    fake.script(held(), held(), held())
    execution_id = drill.start(team, "fan out")
    drill.kill_when_held(execution_id, {"s0", "s1", "s2"}, calls=3)
    drill.respawn(ECHO, ECHO, ECHO)

    final = drill.execution(execution_id, wait=60)
    assert final["status"] == "completed", final
    assert sorted((s["step_key"], s["attempts"], s["output"]) for s in final["steps"]) == [
        (f"s{n}", 2, "echo: fan out") for n in range(3)
    ]
    events = drill.events(execution_id)
    assert_events_are_whole(events, resumes=1, last="execution_completed")
    completed = sorted(e["data"]["step"] for e in events if e["type"] == "step_completed")
    assert completed == ["s0", "s1", "s2"]


def test_an_execution_killed_past_its_resume_limit_fails_as_abandoned(drill: Drill) -> None:
    team = drill.team("sequential", steps=1)
    drill.fake.script(held())
    execution_id = drill.start(team, "doomed")
    for _ in range(MAX_RESUMES):
        drill.kill_when_held(execution_id, {"s0"})
        drill.respawn(held())
    drill.kill_when_held(execution_id, {"s0"})
    drill.respawn()

    final = drill.execution(execution_id, wait=60)
    assert (final["status"], final["status_reason"]) == ("failed", "abandoned"), final
    assert final["error"] == f"the execution was abandoned {MAX_RESUMES + 1} times"
    assert final["steps"][0]["attempts"] == MAX_RESUMES + 1
    assert_events_are_whole(
        drill.events(execution_id), resumes=MAX_RESUMES, last="execution_failed"
    )
    assert drill.kills == MAX_RESUMES + 1
