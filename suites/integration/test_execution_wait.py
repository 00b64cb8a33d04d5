"""The builtin `wait` agent over HTTP: a slow agent with no model behind it. An immediate
cancel interrupts its wait, an `after_step` cancel lets it finish, the execution's
`max_seconds` ends it like any agent; it spends no tokens and costs nothing; its `seconds` are
checked when it is created or changed (a clear 422)."""

from __future__ import annotations

from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect

# Both databases: the cancel and the time budget go through each database's engine writes.
pytestmark = pytest.mark.both_databases

AGENTS = ts.AGENTS
EXECUTIONS = ts.EXECUTIONS


def wait_agent(client: ApiClient, seconds: float, **fields: Any) -> dict[str, Any]:
    parameters = {"seconds": seconds, **fields.pop("parameters", {})}
    return ts.create_agent(client, "waiter", model="wait", parameters=parameters, **fields)


def wait_then_echo(client: ApiClient, seconds: float) -> dict[str, Any]:
    """A team whose `wait` step (``seconds`` long) is followed by an `echo` step."""
    waiter = wait_agent(client, seconds, timeout_seconds=600)
    echo = ts.echo_agent(client)
    flow = ts.workflow("sequential", [ts.step("wait", waiter), ts.step("echo", echo)])
    return ts.create_team(client, [waiter, echo], flow)


def start_waiting(client: ApiClient, team: dict[str, Any], **body: Any) -> dict[str, Any]:
    """Start an execution and return its state once its `wait` step is running."""
    execution = ts.start(client, team, "still here", wait=None, **body)

    def waiting() -> dict[str, Any] | None:
        state = ts.get_execution(client, execution["id"])
        return state if ts.steps_by_key(state)["wait"]["status"] == "running" else None

    ts.wait_until(waiting, what="the wait step running")
    running = ts.get_execution(client, execution["id"])
    assert running["status"] == "running"
    assert [s["status"] for s in running["steps"]] == ["running", "pending"]
    return running


def cancel(client: ApiClient, execution_id: str, mode: str) -> dict[str, Any]:
    """Cancel, holding the answer until the execution has ended (at most 30 s: a `wait` step
    that was not interrupted would still be running then, 600 s long)."""
    response = client.post(
        f"{EXECUTIONS}/{execution_id}/cancel", params={"wait": 30}, json={"mode": mode}
    )
    return expect(response, 202)


def step_events(client: ApiClient, execution_id: str) -> list[tuple[str, str]]:
    events = ts.events_of(client, execution_id, limit=1000)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return [(e["type"], e["data"].get("step", "")) for e in events]


def assert_free(execution: dict[str, Any]) -> None:
    """No tokens, no cost: a builtin agent makes no model call."""
    for item in (execution, *execution["steps"]):
        assert (item["input_tokens"], item["output_tokens"]) == (0, 0), item
        assert float(item["cost_usd"]) == 0, item


def test_an_immediate_cancel_interrupts_the_wait(owner_client: ApiClient) -> None:
    team = wait_then_echo(owner_client, 600)
    running = start_waiting(owner_client, team)

    # The answer says `cancelled` within the cancel's own wait: the 600 s wait was interrupted.
    cancelled = cancel(owner_client, running["id"], "immediate")
    assert (cancelled["status"], cancelled["status_reason"]) == ("cancelled", "cancelled")
    assert cancelled["cancel_mode"] == "immediate"
    assert cancelled["finished_at"] is not None
    steps = ts.steps_by_key(cancelled)
    assert (steps["wait"]["status"], steps["wait"]["output"]) == ("cancelled", None)
    assert (steps["echo"]["status"], steps["echo"]["started_at"]) == ("cancelled", None)
    assert step_events(owner_client, running["id"]) == [
        ("execution_started", ""),
        ("step_started", "wait"),
        ("step_cancelled", "wait"),
        ("execution_cancelled", ""),
    ]
    assert_free(cancelled)
    assert ts.get_execution(owner_client, running["id"]) == cancelled  # nothing came after


def test_an_after_step_cancel_lets_the_wait_finish(owner_client: ApiClient) -> None:
    team = wait_then_echo(owner_client, 3)
    running = start_waiting(owner_client, team)

    cancelled = cancel(owner_client, running["id"], "after_step")
    assert (cancelled["status"], cancelled["status_reason"]) == ("cancelled", "cancelled")
    assert cancelled["cancel_mode"] == "after_step"
    steps = ts.steps_by_key(cancelled)
    assert (steps["wait"]["status"], steps["wait"]["output"]) == ("completed", "still here")
    assert (steps["echo"]["status"], steps["echo"]["started_at"]) == ("cancelled", None)
    assert step_events(owner_client, running["id"]) == [
        ("execution_started", ""),
        ("step_started", "wait"),
        ("step_completed", "wait"),
        ("execution_cancelled", ""),
    ]
    assert_free(cancelled)


def test_max_seconds_ends_a_wait_like_any_agent(owner_client: ApiClient) -> None:
    team = wait_then_echo(owner_client, 600)
    execution = ts.start(owner_client, team, wait=30, budget={"max_seconds": 1})
    assert (execution["status"], execution["status_reason"]) == ("timed_out", "timed_out")
    steps = ts.steps_by_key(execution)
    assert (steps["wait"]["status"], steps["wait"]["output"]) == ("cancelled", None)
    assert (steps["echo"]["status"], steps["echo"]["started_at"]) == ("cancelled", None)
    assert step_events(owner_client, execution["id"]) == [
        ("execution_started", ""),
        ("step_started", "wait"),
        ("step_cancelled", "wait"),
        ("execution_cancelled", ""),
    ]


def test_a_short_wait_completes_with_its_input(owner_client: ApiClient) -> None:
    waiter = wait_agent(owner_client, 0.05, parameters={"output_key": "waited"})
    assert (waiter["model"], waiter["parameters"]) == (
        "wait",
        {"seconds": 0.05, "output_key": "waited"},
    )
    team = ts.create_team(owner_client, [waiter])
    execution = ts.run_to_end(owner_client, team, "patience")
    assert (execution["status"], execution["result"]) == ("completed", "patience")
    assert ts.context_of(owner_client, execution["id"])["current"] == {"waited": "patience"}
    assert_free(execution)


def refused(client: ApiClient, response_of: Any) -> dict[str, str]:
    """A 422's errors, by pointer."""
    problem = assert_problem(response_of, 422)
    assert pointers(problem)
    return {e["pointer"]: e["message"] for e in problem["errors"]}


def test_seconds_are_checked_when_the_agent_is_defined(owner_client: ApiClient) -> None:
    def create(**fields: Any) -> dict[str, str]:
        body = {"name": ts.unique("waiter"), "provider": "builtin", "model": "wait", **fields}
        return refused(owner_client, owner_client.post(AGENTS, json=body))

    assert create() == {
        "/body/parameters/seconds": "required for the wait kind (how long to wait, in seconds)"
    }
    assert create(parameters={"seconds": 90}, timeout_seconds=60) == {
        "/body/parameters/seconds": "must be at most the agent's timeout_seconds (60); "
        "wait less or raise timeout_seconds (up to 600)"
    }
    # The schema's own bounds: a number (not "30", not true), more than 0, at most 600.
    for seconds in (0, -1, 601, "30", True):
        assert list(create(parameters={"seconds": seconds}, timeout_seconds=600)) == [
            "/body/parameters/seconds"
        ]
    # Other builtin kinds take no seconds, nor do model agents.
    echo = {"name": ts.unique("echo"), "provider": "builtin", "model": "echo"}
    response = owner_client.post(AGENTS, json={**echo, "parameters": {"seconds": 5}})
    assert refused(owner_client, response) == {
        "/body/parameters/seconds": "only builtin wait agents take seconds"
    }
    model = {"name": ts.unique("model"), "provider": "openai", "model": "gpt-4o-mini"}
    response = owner_client.post(AGENTS, json={**model, "parameters": {"seconds": 5}})
    assert refused(owner_client, response) == {
        "/body/parameters/seconds": "only builtin wait agents take seconds"
    }


def test_seconds_are_checked_when_the_agent_changes(owner_client: ApiClient) -> None:
    waiter = wait_agent(owner_client, 30)
    assert waiter["timeout_seconds"] == 60
    url = f"{AGENTS}/{waiter['id']}"
    # A shorter timeout than the stored wait, or a longer wait than the stored timeout.
    for change in ({"timeout_seconds": 10}, {"parameters": {"seconds": 61}}):
        assert list(refused(owner_client, owner_client.patch(url, json=change))) == [
            "/body/parameters/seconds"
        ], change
    changed = expect(
        owner_client.patch(url, json={"parameters": {"seconds": 120}, "timeout_seconds": 120}),
        200,
    )
    assert (changed["parameters"], changed["timeout_seconds"]) == ({"seconds": 120}, 120)
    # An echo agent turned into a wait agent needs its seconds.
    echo = ts.echo_agent(owner_client)
    response = owner_client.patch(f"{AGENTS}/{echo['id']}", json={"model": "wait"})
    assert list(refused(owner_client, response)) == ["/body/parameters/seconds"]
