"""Durability: a backend killed with SIGKILL mid-execution is replaced by a new process on the
same database, which resumes the execution from its last completed step.

One kill, on each database: the behaviour, kept in the default run. The drills
(``suites/drills/test_crash_drills.py``) kill a longer pipeline again and again, parallel
steps, and past the resume limit.
"""

from __future__ import annotations

import threading

import pytest

from qa.client import API, ApiClient
from qa.factories import create_agent, expect, tenant_with_owner
from qa.fake_openai import FakeOpenAI, Held, Reply
from qa.plugin import LaunchBackend
from qa.polling import wait_until

# A long scenario: run by `nox -s drills`, not the default run (qa.plugin's DRILL).
pytestmark = pytest.mark.drill

FAST_RECOVERY = {
    "RENUM_EXECUTIONS__HEARTBEAT_SECONDS": "0.2",
    "RENUM_EXECUTIONS__STALE_AFTER_SECONDS": "1",
    "RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS": "0.3",
}


@pytest.mark.parametrize("flavour", ["sqlite", "postgresql"])
def test_killed_backend_resumes_execution_from_last_completed_step(
    launch_backend: LaunchBackend, flavour: str, fake_openai: FakeOpenAI
) -> None:
    fake = fake_openai
    # Step 1 answers at once; step 2's answer is held, so the kill lands while it is in flight.
    fake.script(Reply("first"), Held(threading.Event(), Reply("never delivered")))
    backend = launch_backend(flavour, extra_env=FAST_RECOVERY)
    tenant, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    agents = [
        create_agent(
            owner,
            f"model-{n}",
            provider="openai",
            model="gpt-4o-mini",
            base_url=fake.base_url,
            retry={"max_attempts": 1},
        )["id"]
        for n in range(3)
    ]
    team = expect(owner.post(f"{API}/teams", json={"name": "durable", "agent_ids": agents}), 201)
    execution = expect(
        owner.post(f"{API}/teams/{team['id']}/executions", json={"prompt": "go"}), 202
    )
    url = f"{API}/executions/{execution['id']}"

    def second_step_running() -> bool:
        steps = expect(owner.get(f"{url}/steps"), 200)
        return steps[0]["status"] == "completed" and steps[1]["status"] == "running"

    wait_until(second_step_running, timeout=20, what="the second step running", interval=0.1)
    wait_until(lambda: fake.in_flight == 1, what="the second step's model call")
    backend.kill()
    owner.close()

    fake.reset()
    fake.script(Reply("second"), Reply("third"))
    backend.respawn()
    owner = ApiClient(backend.base_url).login(tenant.owner.email, tenant.owner.password)
    final = expect(owner.get(f"{url}?wait=30"), 200)

    assert final["status"] == "completed", final
    assert final["result"] == "third"
    steps = final["steps"]
    assert [s["status"] for s in steps] == ["completed"] * 3
    assert steps[0]["attempts"] == 1, "a completed step must not run again"
    assert steps[0]["output"] == "first"
    assert steps[1]["attempts"] == 2
    assert steps[1]["output"] == "second"
    events = expect(owner.get(f"{url}/events"), 200)
    types = [e["type"] for e in events]
    assert types.count("execution_resumed") == 1
    assert types[-1] == "execution_completed"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    owner.close()
