"""The cost ledger and budgets over HTTP: every model call recorded once with its tokens and
cost, totals per model, agent, team and user equal to the sum of the calls, the right key
paying; budgets that stop an execution before the next model call."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Held, Reply

# Both databases: the ledger's aggregation queries and budgets, on each database.
pytestmark = pytest.mark.both_databases

USAGE = ts.USAGE
fresh_account = ts.fresh_account

# USD per million tokens in the bundled price table.
PRICES = {
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": (Decimal("2.50"), Decimal("10")),
}


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    price_in, price_out = PRICES[model]
    return (tokens_in * price_in + tokens_out * price_out) / Decimal(1_000_000)


def usage(client: ApiClient, **params: Any) -> dict[str, Any]:
    return expect(client.get(USAGE, params=params), 200)


def rows_by_key(report: dict[str, Any]) -> dict[str | None, tuple[int, int, int, Decimal]]:
    return {
        r["key"]: (r["calls"], r["input_tokens"], r["output_tokens"], Decimal(r["cost_usd"]))
        for r in report["rows"]
    }


def test_usage_totals_equal_the_sum_of_the_calls(
    fresh_account: ts.Account, fake_openai: FakeOpenAI
) -> None:
    owner, member = fresh_account.owner, fresh_account.member
    secret = ts.new_secret()
    key = ts.create_key(member, secret)
    platform = ts.model_agent(member, fake_openai.base_url, model="gpt-4o-mini")
    paid = ts.model_agent(member, fake_openai.base_url, model="gpt-4o", provider_key_id=key["id"])
    local = ts.echo_agent(member)
    flow = ts.workflow(
        "sequential",
        [
            ts.step("cheap", platform),
            ts.step("dear", paid),
            ts.step("local", local),
            ts.step("cheap-again", platform),
        ],
    )
    team = ts.create_team(member, [platform, paid, local], flow)
    fake_openai.script(
        Reply("a", input_tokens=100, output_tokens=20),
        Reply("b", input_tokens=40, output_tokens=10),
        Reply("c", input_tokens=7, output_tokens=3),
    )
    execution = ts.run_to_end(member, team)
    assert execution["status"] == "completed", execution

    # The user's key paid for its agent's call, nobody's key for the others.
    cheap, dear, cheap_again = fake_openai.completions
    assert dear.headers["authorization"] == f"Bearer {secret}"
    assert "authorization" not in cheap.headers
    assert "authorization" not in cheap_again.headers
    assert [r.json["model"] for r in fake_openai.completions] == [
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4o-mini",
    ]

    mini = (2, 107, 23, cost("gpt-4o-mini", 107, 23))
    four = (1, 40, 10, cost("gpt-4o", 40, 10))
    assert rows_by_key(usage(owner, group_by="model")) == {"gpt-4o-mini": mini, "gpt-4o": four}
    assert rows_by_key(usage(owner, group_by="agent")) == {platform["id"]: mini, paid["id"]: four}
    everything = (3, 147, 33, mini[3] + four[3])
    assert rows_by_key(usage(owner, group_by="team")) == {team["id"]: everything}
    by_user = usage(owner, group_by="user")
    assert rows_by_key(by_user) == {fresh_account.member_id: everything}
    assert by_user["group_by"] == "user"
    total = by_user["total"]
    assert (total["calls"], total["input_tokens"], total["output_tokens"]) == everything[:3]
    assert Decimal(total["cost_usd"]) == everything[3]
    assert isinstance(total["cost_usd"], str), "money travels as a decimal string"

    # The execution and its steps carry the same figures.
    assert (execution["input_tokens"], execution["output_tokens"]) == (147, 33)
    assert Decimal(execution["cost_usd"]) == everything[3]
    steps = ts.steps_by_key(execution)
    assert Decimal(steps["dear"]["cost_usd"]) == four[3]
    assert (steps["local"]["input_tokens"], steps["local"]["cost_usd"]) == (0, "0")
    costs = [e["data"] for e in ts.events_of(owner, execution["id"]) if e["type"] == "cost_updated"]
    assert [c["step"] for c in costs] == ["cheap", "dear", "cheap-again"]
    assert Decimal(costs[-1]["total_cost_usd"]) == everything[3]
    assert costs[-1]["total_input_tokens"] == 147
    # Each event's step_* is its own call: they add up to the totals (the totals do not).
    assert sum(Decimal(c["step_cost_usd"]) for c in costs) == everything[3]
    assert sum(c["step_input_tokens"] for c in costs) == 147

    # Viewers read usage too; the default grouping is by team.
    assert rows_by_key(usage(fresh_account.viewer)) == {team["id"]: everything}


def test_usage_time_window_and_isolation(
    fresh_account: ts.Account, other_owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    owner = fresh_account.owner
    agent = ts.model_agent(owner, fake_openai.base_url)
    team = ts.create_team(owner, [agent])
    before = datetime.now(UTC) - timedelta(seconds=5)
    fake_openai.script(Reply("x", input_tokens=5, output_tokens=5))
    assert ts.run_to_end(owner, team)["status"] == "completed"
    after = datetime.now(UTC) + timedelta(seconds=5)

    inside = usage(owner, **{"from": before.isoformat(), "to": after.isoformat()})
    assert inside["total"]["calls"] == 1
    later = usage(owner, **{"from": after.isoformat()})
    assert later["rows"] == []
    assert later["total"]["calls"] == 0
    assert Decimal(later["total"]["cost_usd"]) == 0
    earlier = usage(owner, to=before.isoformat())
    assert earlier["total"]["calls"] == 0

    backwards = owner.get(USAGE, params={"from": after.isoformat(), "to": before.isoformat()})
    assert pointers(assert_problem(backwards, 422)) == {"/query/to"}
    assert_problem(owner.get(USAGE, params={"group_by": "planet"}), 422)

    # Another account never sees these calls.
    theirs = usage(other_owner_client, group_by="team")
    assert team["id"] not in {r["key"] for r in theirs["rows"]}


def test_usage_is_kept_until_an_execution_books_calls(
    fresh_account: ts.Account, fake_openai: FakeOpenAI
) -> None:
    """The performance capability's cache and conditional reads, through the real server: an
    answer kept is served again (same body, same tag, 304 when asked with it) until the
    engine books a model call of the account; then the next read shows it."""
    owner = fresh_account.owner
    agent = ts.model_agent(owner, fake_openai.base_url)
    team = ts.create_team(owner, [agent])
    first = owner.get(USAGE)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "private, no-cache"
    tag = first.headers["etag"]
    again = owner.get(USAGE)
    assert (again.json(), again.headers["etag"]) == (first.json(), tag)
    unchanged = owner.get(USAGE, headers={"If-None-Match": tag})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    by_team = {"team_id": team["id"]}
    assert expect(owner.get(ts.EXECUTIONS, params=by_team), 200)["items"] == []  # kept

    fake_openai.script(Reply("x", input_tokens=5, output_tokens=5))
    execution = ts.run_to_end(owner, team)
    assert execution["status"] == "completed"
    after = owner.get(USAGE, headers={"If-None-Match": tag})
    assert after.status_code == 200
    assert after.json()["total"]["calls"] == first.json()["total"]["calls"] + 1
    listed = expect(owner.get(ts.EXECUTIONS, params=by_team), 200)
    assert [(e["id"], e["status"]) for e in listed["items"]] == [(execution["id"], "completed")]


def test_builtin_agents_record_no_usage(fresh_account: ts.Account) -> None:
    owner = fresh_account.owner
    team = ts.create_team(owner, [ts.echo_agent(owner), ts.template_agent(owner, "t")])
    assert ts.run_to_end(owner, team)["status"] == "completed"
    report = usage(owner, group_by="agent")
    assert report["rows"] == []
    assert report["total"]["calls"] == 0


# -- budgets ----------------------------------------------------------------------------------


def three_model_steps(client: ApiClient, base_url: str, model: str = "gpt-4o-mini") -> Any:
    agent = ts.model_agent(client, base_url, model=model, timeout_seconds=30)
    flow = ts.workflow("sequential", [ts.step(f"s{n}", agent) for n in range(1, 4)])
    return ts.create_team(client, [agent], flow)


@pytest.mark.parametrize(
    "budget",
    [
        pytest.param({"max_tokens": 25}, id="max-tokens"),
        # gpt-4o: 1000 tokens in and out cost 0.0125 USD.
        pytest.param({"max_cost_usd": "0.01"}, id="max-cost"),
    ],
)
def test_exceeding_the_budget_cancels_before_the_next_call(
    owner_client: ApiClient, fake_openai: FakeOpenAI, budget: dict[str, Any]
) -> None:
    team = three_model_steps(owner_client, fake_openai.base_url, model="gpt-4o")
    fake_openai.script(*[Reply("spent", input_tokens=1000, output_tokens=1000)] * 3)
    execution = ts.start(owner_client, team, budget=budget)
    assert execution["status"] == "cancelled", execution
    assert execution["status_reason"] == "budget_exceeded"
    assert execution["budget"] == budget
    assert len(fake_openai.completions) == 1, "a model call started past the budget"
    steps = ts.steps_by_key(execution)
    assert steps["s1"]["status"] == "completed"
    assert steps["s2"]["status"] == steps["s3"]["status"] == "cancelled"
    assert steps["s2"]["started_at"] is None
    events = ts.events_of(owner_client, execution["id"])
    assert events[-1]["type"] == "execution_cancelled"
    assert events[-1]["data"]["reason"] == "budget_exceeded"
    assert "step_started" not in ts.event_types(
        events[events.index(next(e for e in events if e["type"] == "step_completed")) :]
    )
    # The call that was made is paid for.
    assert execution["input_tokens"] == 1000


def test_max_seconds_times_out_a_hanging_call(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    team = three_model_steps(owner_client, fake_openai.base_url)
    never = threading.Event()  # the call's answer is never released: only the budget ends it
    fake_openai.script(Held(never))
    execution = ts.start(owner_client, team, budget={"max_seconds": 1})
    assert execution["status"] == "timed_out", execution
    assert execution["status_reason"] == "timed_out"
    # The budget ended the execution while the call still waited, and the call was dropped.
    ts.wait_until(lambda: len(fake_openai.abandoned) == 1, what="the hanging call given up")
    steps = ts.steps_by_key(execution)
    assert steps["s1"]["status"] == "cancelled"
    assert "timed_out" in steps["s1"]["error"]
    assert steps["s2"]["started_at"] is None
    assert len(fake_openai.completions) == 1
    assert ts.events_of(owner_client, execution["id"])[-1]["data"]["reason"] == "timed_out"


def test_spending_stays_in_the_ledger_after_the_team_is_deleted(
    fresh_account: ts.Account, fake_openai: FakeOpenAI
) -> None:
    owner = fresh_account.owner
    agent = ts.model_agent(owner, fake_openai.base_url)
    team = ts.create_team(owner, [agent])
    fake_openai.script(Reply("spent", input_tokens=1000, output_tokens=500))
    assert ts.run_to_end(owner, team)["status"] == "completed"
    spent = usage(owner, group_by="agent")["total"]
    assert spent["calls"] == 1

    expect(owner.delete(f"{ts.TEAMS}/{team['id']}"), 204)
    # Money spent is history: deleting the team must not erase it from the ledger.
    assert usage(owner, group_by="agent")["total"] == spent
    assert usage(owner, group_by="model")["total"] == spent


def test_budget_stops_parallel_steps_still_waiting_for_a_slot(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url, model="gpt-4o")
    flow = ts.workflow("parallel", [ts.step(f"p{n}", agent) for n in range(3)], max_concurrency=1)
    team = ts.create_team(owner_client, [agent], flow)
    fake_openai.script(*[Reply("spent", input_tokens=1000, output_tokens=1000)] * 3)
    execution = ts.start(owner_client, team, budget={"max_tokens": 100})
    assert execution["status"] == "cancelled", execution
    assert execution["status_reason"] == "budget_exceeded"
    assert len(fake_openai.completions) == 1, "model calls started past the budget"
    assert execution["input_tokens"] == 1000
