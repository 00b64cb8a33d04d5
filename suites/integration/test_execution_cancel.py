"""Cancelling executions over HTTP: `immediate` abandons the in-flight model call, `after_step`
lets it finish; either way no step starts once the cancel has returned. Plus who may cancel,
and the per-account limit on concurrent executions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Hang, Held, Reply, Slow

# Both databases: cancellation races and the per-account slot counters on each database.
pytestmark = pytest.mark.both_databases

EXECUTIONS = ts.EXECUTIONS
limited_server = ts.limited_server


def cancel(
    client: ApiClient, execution_id: str, mode: str = "immediate", wait: float = 10
) -> tuple[dict[str, Any], datetime]:
    response = client.post(
        f"{EXECUTIONS}/{execution_id}/cancel", params={"wait": wait}, json={"mode": mode}
    )
    returned = datetime.now(UTC)
    return expect(response, 202), returned


def held() -> Held:
    """A model call whose answer never comes: the execution runs until it is cancelled (the
    call is then abandoned) or the test ends (the ``fake_openai`` fixture lets it go)."""
    return Held(threading.Event())


def two_step_team(client: ApiClient, base_url: str, strategy: str = "sequential") -> Any:
    """A model step followed by another model step (so a second call would be visible)."""
    first = ts.model_agent(client, base_url, timeout_seconds=30)
    second = ts.model_agent(client, base_url, timeout_seconds=30)
    flow = ts.workflow(strategy, [ts.step("first", first), ts.step("second", second)])
    return ts.create_team(client, [first, second], flow)


def assert_nothing_started_after(
    client: ApiClient, execution: dict[str, Any], returned: datetime
) -> None:
    for step in execution["steps"]:
        started = ts.when(step["started_at"])
        assert started is None or started < returned, f"{step['step_key']} started after cancel"
    events = ts.events_of(client, execution["id"], limit=1000)
    cancelled_at = next(
        n for n, e in enumerate(events) if e["type"] in {"execution_cancelled", "step_cancelled"}
    )
    assert "step_started" not in ts.event_types(events[cancelled_at:])
    assert events[-1]["type"] == "execution_cancelled"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_immediate_cancel_abandons_the_model_call(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    team = two_step_team(owner_client, fake_openai.base_url)
    fake_openai.script(held())
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")
    running = ts.get_execution(owner_client, execution["id"])
    assert running["status"] == "running"
    assert running["progress"] == 0.0
    assert running["finished_at"] is None
    assert [s["status"] for s in running["steps"]] == ["running", "pending"]
    assert running["steps"][0]["started_at"] is not None

    # The call's answer never comes: the cancel ends the execution without waiting for it.
    cancelled, returned = cancel(owner_client, execution["id"], "immediate")
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["status_reason"] == "cancelled"
    assert cancelled["finished_at"] is not None
    steps = ts.steps_by_key(cancelled)
    assert steps["first"]["status"] == "cancelled"
    assert steps["first"]["output"] is None
    assert steps["second"]["status"] == "cancelled"
    assert steps["second"]["started_at"] is None
    assert_nothing_started_after(owner_client, cancelled, returned)

    # The call was abandoned, and nothing came after: no second model call, the state final.
    ts.wait_until(lambda: len(fake_openai.abandoned) == 1, what="the model call abandoned")
    assert len(fake_openai.completions) == 1
    assert ts.get_execution(owner_client, execution["id"]) == cancelled


def test_after_step_cancel_lets_the_running_step_finish(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    team = two_step_team(owner_client, fake_openai.base_url)
    fake_openai.script(Slow(1.0, Reply("finished anyway")), Reply("must not run"))
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")

    cancelled, returned = cancel(owner_client, execution["id"], "after_step")
    assert cancelled["status"] == "cancelled", cancelled
    steps = ts.steps_by_key(cancelled)
    assert steps["first"]["status"] == "completed"
    assert steps["first"]["output"] == "finished anyway"
    assert steps["second"]["status"] == "cancelled"
    assert steps["second"]["started_at"] is None
    assert_nothing_started_after(owner_client, cancelled, returned)
    assert len(fake_openai.completions) == 1
    assert fake_openai.pending_steps == 1


def test_the_cancel_reply_says_it_was_accepted_and_in_which_mode(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    team = two_step_team(owner_client, fake_openai.base_url)
    fake_openai.script(held())
    execution = ts.start(owner_client, team, wait=None)
    assert execution["cancel_mode"] is None
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")

    # after_step, without waiting: the running step is still waiting for its model's answer.
    accepted, _ = cancel(owner_client, execution["id"], "after_step", wait=0)
    assert (accepted["status"], accepted["cancel_mode"]) == ("running", "after_step")
    # An immediate cancel after it abandons the running step at once (never the reverse).
    ended, _ = cancel(owner_client, execution["id"], "immediate")
    assert (ended["status"], ended["cancel_mode"]) == ("cancelled", "immediate")


def test_immediate_cancel_of_parallel_steps(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url, timeout_seconds=30)
    flow = ts.workflow("parallel", [ts.step(f"p{n}", agent) for n in range(3)])
    team = ts.create_team(owner_client, [agent], flow)
    fake_openai.script(held(), held(), held())
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 3, what="three model calls")
    cancelled, returned = cancel(owner_client, execution["id"])
    assert cancelled["status"] == "cancelled", cancelled
    assert {s["status"] for s in cancelled["steps"]} == {"cancelled"}
    assert_nothing_started_after(owner_client, cancelled, returned)
    ts.wait_until(lambda: len(fake_openai.abandoned) == 3, what="the three calls abandoned")


def test_cancel_without_a_body_is_immediate(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    team = two_step_team(owner_client, fake_openai.base_url)
    fake_openai.script(held())
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")
    response = owner_client.post(f"{EXECUTIONS}/{execution['id']}/cancel", params={"wait": 10})
    cancelled = expect(response, 202)
    assert cancelled["status"] == "cancelled"
    assert ts.steps_by_key(cancelled)["first"]["status"] == "cancelled"


def test_cancelling_a_finished_execution_conflicts(owner_client: ApiClient) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)
    assert execution["status"] == "completed"
    problem = assert_problem(owner_client.post(f"{EXECUTIONS}/{execution['id']}/cancel"), 409)
    assert "completed" in problem["detail"]
    assert ts.get_execution(owner_client, execution["id"])["status"] == "completed"


def test_who_may_cancel(
    owner_client: ApiClient,
    viewer_client: ApiClient,
    other_owner_client: ApiClient,
    fake_openai: FakeOpenAI,
) -> None:
    team = two_step_team(owner_client, fake_openai.base_url)
    fake_openai.script(held())
    execution = ts.start(owner_client, team, wait=None)
    url = f"{EXECUTIONS}/{execution['id']}/cancel"
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")

    assert_problem(viewer_client.post(url, json={"mode": "immediate"}), 403)
    assert_problem(other_owner_client.post(url, json={"mode": "immediate"}), 404)
    bad_mode = owner_client.post(url, json={"mode": "eventually"})
    assert pointers(assert_problem(bad_mode, 422)) == {"/body/mode"}
    assert ts.get_execution(owner_client, execution["id"])["status"] == "running"

    cancelled, _ = cancel(owner_client, execution["id"])
    assert cancelled["status"] == "cancelled"
    assert_problem(
        owner_client.post(f"{EXECUTIONS}/00000000-0000-4000-8000-000000000000/cancel"), 404
    )


def test_no_step_starts_after_cancel_returns_on_a_busy_execution(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    """Hundreds of instant steps, so the cancel lands between steps: the guard must hold. A
    hanging last step keeps the execution from ending before the cancel, however fast."""
    echo = ts.echo_agent(owner_client)
    last = ts.model_agent(owner_client, fake_openai.base_url, timeout_seconds=30)
    steps = [ts.step(f"s{n}", echo) for n in range(400)] + [ts.step("last", last)]
    team = ts.create_team(owner_client, [echo, last], ts.workflow("sequential", steps))
    fake_openai.script(held())
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(
        lambda: any(
            step["status"] == "completed"
            for step in ts.get_execution(owner_client, execution["id"])["steps"]
        ),
        what="a first step to complete",
    )

    cancelled, returned = cancel(owner_client, execution["id"], "immediate")
    assert cancelled["status"] == "cancelled", cancelled
    statuses = [s["status"] for s in cancelled["steps"]]
    done = statuses.index("cancelled")
    assert done > 0
    assert set(statuses[:done]) == {"completed"}
    assert set(statuses[done:]) == {"cancelled"}
    assert_nothing_started_after(owner_client, cancelled, returned)
    events = ts.events_of(owner_client, execution["id"], limit=1000)
    late = [
        e for e in events if e["type"] == "step_started" and ts.when(e["created_at"]) >= returned
    ]
    assert late == []


def test_after_step_cancel_stops_parallel_steps_still_waiting_for_a_slot(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    """With max_concurrency 1 the steps run one by one: a step that has not begun its call
    when the cancel returns must never begin it."""
    agent = ts.model_agent(owner_client, fake_openai.base_url, timeout_seconds=30)
    flow = ts.workflow("parallel", [ts.step(f"p{n}", agent) for n in range(3)], max_concurrency=1)
    team = ts.create_team(owner_client, [agent], flow)
    fake_openai.script(*[Slow(0.7, Reply(f"r{n}")) for n in range(3)])
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")

    cancelled, returned = cancel(owner_client, execution["id"], "after_step")
    assert cancelled["status"] == "cancelled", cancelled
    statuses = sorted(s["status"] for s in cancelled["steps"])
    assert statuses == ["cancelled", "cancelled", "completed"], cancelled["steps"]
    late = [r for r in fake_openai.completions if r.received_at >= returned.timestamp()]
    assert late == [], f"{len(late)} model calls began after the cancel returned"
    assert len(fake_openai.completions) == 1


# -- one server with LIMITS: one running execution per account, one driven per process ------


def test_concurrent_executions_per_account_are_limited(
    limited_server: ts.PrivateServer, fake_openai: FakeOpenAI
) -> None:
    first, second = limited_server.account(), limited_server.account()
    try:
        owner = first.owner
        team = two_step_team(owner, fake_openai.base_url)
        fake_openai.script(held())
        running = ts.start(owner, team, wait=None)
        ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")

        refused = owner.post(f"{ts.TEAMS}/{team['id']}/executions", json={"prompt": "second"})
        problem = assert_problem(refused, 429)
        assert "1" in problem["detail"]
        assert expect(owner.get(EXECUTIONS), 200)["total"] == 1, "the refused one was stored"

        # Another account has its own allowance: accepted (it waits for the runner).
        their_team = ts.create_team(second.owner, [ts.echo_agent(second.owner)])
        theirs = ts.start(second.owner, their_team, wait=None)
        assert theirs["status"] in {"pending", "running"}

        assert cancel(owner, running["id"])[0]["status"] == "cancelled"
        assert ts.get_execution(second.owner, theirs["id"], wait=10)["status"] == "completed"
        # The slot is free again.
        after = ts.start(owner, team, "third")
        assert after["status"] == "completed", after
        assert after["result"] == "echo: third"
    finally:
        first.close()
        second.close()


def test_cancelling_a_queued_execution_ends_it_at_once(
    limited_server: ts.PrivateServer, fake_openai: FakeOpenAI
) -> None:
    """With the one runner slot busy, another execution waits as `pending`; cancelling it
    must not wait for the slot."""
    first, second = limited_server.account(), limited_server.account()
    busy: dict[str, Any] | None = None
    try:
        busy_team = two_step_team(first.owner, fake_openai.base_url)
        fake_openai.script(held())
        busy = ts.start(first.owner, busy_team, wait=None)
        ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")
        team = two_step_team(second.owner, fake_openai.base_url)
        queued = ts.start(second.owner, team, "queued", wait=0.3)
        assert queued["status"] == "pending", queued

        cancelled, _ = cancel(second.owner, queued["id"], "immediate", wait=2)
        assert cancelled["status"] == "cancelled", cancelled
        # It did not wait for the slot: the busy execution still holds it, its call unanswered.
        assert ts.get_execution(first.owner, busy["id"])["status"] == "running"
        assert fake_openai.in_flight == 1
        assert {s["status"] for s in cancelled["steps"]} == {"cancelled"}
        assert all(s["started_at"] is None for s in cancelled["steps"])
        assert len(fake_openai.completions) == 1
    finally:
        if busy is not None:
            cancel(first.owner, busy["id"])
        first.close()
        second.close()


def test_deleting_a_team_mid_execution_frees_its_slot(
    limited_server: ts.PrivateServer, fake_openai: FakeOpenAI
) -> None:
    account = limited_server.account()
    try:
        owner = account.owner
        team = two_step_team(owner, fake_openai.base_url)
        fake_openai.script(Hang(2))
        running = ts.start(owner, team, wait=None)
        ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the first model call")

        deleted = owner.delete(f"{ts.TEAMS}/{team['id']}")
        if deleted.status_code == 409:
            # Refusing is fine too; then the running execution is cancelled first.
            assert cancel(owner, running["id"])[0]["status"] == "cancelled"
            expect(owner.delete(f"{ts.TEAMS}/{team['id']}"), 204)
        else:
            expect(deleted, 204)
            assert_problem(owner.get(f"{EXECUTIONS}/{running['id']}"), 404)

        # Whichever way, the account can run again: its slot was not lost with the team.
        fresh_team = ts.create_team(owner, [ts.echo_agent(owner)])
        after = owner.post(
            f"{ts.TEAMS}/{fresh_team['id']}/executions",
            params={"wait": 10},
            json={"prompt": "again"},
        )
        assert expect(after, 202)["status"] == "completed"
    finally:
        account.close()
