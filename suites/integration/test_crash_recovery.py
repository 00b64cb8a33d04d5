"""Durability: a backend killed with SIGKILL mid-execution is replaced by a new process on the
same database, which resumes the execution from its last completed step."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, expect, unique_email
from qa.fake_openai import FakeOpenAI, Reply, Slow
from qa.plugin import LaunchBackend

FAST_RECOVERY = {
    "RENUM_EXECUTIONS__HEARTBEAT_SECONDS": "0.2",
    "RENUM_EXECUTIONS__STALE_AFTER_SECONDS": "1",
    "RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS": "0.3",
}


def _owner(base_url: str, admin_email: str, admin_password: str) -> tuple[ApiClient, str]:
    admin = ApiClient(base_url).login(admin_email, admin_password)
    email = unique_email("owner")
    expect(
        admin.post(
            f"{API}/accounts",
            json={"name": email, "owner_email": email, "owner_password": DEFAULT_PASSWORD},
        ),
        201,
    )
    admin.close()
    return ApiClient(base_url).login(email, DEFAULT_PASSWORD), email


def _wait_for(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.mark.parametrize("flavour", ["sqlite", "postgresql"])
def test_killed_backend_resumes_execution_from_last_completed_step(
    launch_backend: LaunchBackend, flavour: str, fake_openai: FakeOpenAI
) -> None:
    fake = fake_openai
    # Step 1 answers at once; step 2 is slow, so the kill lands while it is in flight.
    fake.script(Reply("first"), Slow(8, Reply("never delivered")))
    backend = launch_backend(flavour, extra_env=FAST_RECOVERY)
    owner, email = _owner(backend.base_url, backend.admin_email, backend.admin_password)
    agents = [
        expect(
            owner.post(
                f"{API}/agents",
                json={
                    "name": f"model-{n}",
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "base_url": fake.base_url,
                    "retry": {"max_attempts": 1},
                },
            ),
            201,
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

    _wait_for(second_step_running)
    backend.kill()
    owner.close()

    fake.reset()
    fake.script(Reply("second"), Reply("third"))
    backend.respawn()
    owner = ApiClient(backend.base_url).login(email, DEFAULT_PASSWORD)
    final = expect(owner.get(f"{url}?wait=30"), 200)

    assert final["status"] == "completed", final
    assert final["result"] == "third"
    steps = final["steps"]
    assert [s["status"] for s in steps] == ["completed"] * 3
    assert steps[0]["attempts"] == 1, "a completed step must not run again"
    assert steps[0]["output"] == "first"
    assert steps[1]["attempts"] == 2
    assert steps[1]["output"] == "second"
    events = [e["type"] for e in expect(owner.get(f"{url}/events"), 200)]
    assert "execution_resumed" in events
    assert events[-1] == "execution_completed"
    seqs = [e["seq"] for e in expect(owner.get(f"{url}/events"), 200)]
    assert seqs == list(range(1, len(seqs) + 1))
    owner.close()
