"""The analytics routes through the real backend: a period's summary and time series equal the
executions and model calls an account ran (through the rollups), owners see their account and
nothing else, admins every account or one, and bad periods, groupings and lengths are 422s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect
from qa.fake_openai import Fail, FakeOpenAI, Reply
from qa.polling import wait_until

pytestmark = pytest.mark.both_databases

fresh_account = ts.fresh_account
SUMMARY = f"{ts.API}/analytics/summary"
TIMESERIES = f"{ts.API}/analytics/timeseries"


def summary(client: ApiClient, **params: Any) -> dict[str, Any]:
    found: dict[str, Any] = expect(client.get(SUMMARY, params=params), 200)
    return found


def test_a_summary_and_time_series_add_up_to_what_the_account_ran(
    fresh_account: ts.Account,
    fake_openai: FakeOpenAI,
    admin_client: ApiClient,
    other_owner_client: ApiClient,
) -> None:
    owner = fresh_account.owner
    mini = ts.model_agent(owner, fake_openai.base_url, model="gpt-4o-mini")
    four = ts.model_agent(owner, fake_openai.base_url, model="gpt-4o")
    flow = ts.workflow("sequential", [ts.step("a", mini), ts.step("b", four)])
    team = ts.create_team(owner, [mini, four], flow, name="Research")
    fake_openai.script(
        Reply("1", input_tokens=10, output_tokens=1),
        Reply("2", input_tokens=20, output_tokens=2),
        Reply("3", input_tokens=30, output_tokens=3),
        Fail(400),
    )
    assert ts.run_to_end(owner, team)["status"] == "completed"
    assert ts.run_to_end(owner, team)["status"] == "failed"
    usage = expect(owner.get(ts.USAGE), 200)["total"]

    # Figures count once their execution is rolled up: within moments of its end.
    found = wait_until(
        lambda: (s := summary(owner))["executions"]["total"] == 2 and s, 30, "both rolled up"
    )
    assert found["account_id"] == fresh_account.id
    assert found["executions"]["by_status"] == {"completed": 1, "failed": 1}
    assert (found["executions"]["success_rate"], found["executions"]["failure_rate"]) == (0.5, 0.5)
    assert found["usage"]["calls"] == usage["calls"] == 3
    assert found["usage"]["input_tokens"] == 60
    assert Decimal(found["usage"]["cost_usd"]) == Decimal(usage["cost_usd"])
    assert Decimal(found["usage"]["platform_cost_usd"]) == Decimal(usage["cost_usd"])
    assert Decimal(found["usage"]["own_keys_cost_usd"]) == 0
    assert [(t["id"], t["name"], t["calls"]) for t in found["top_teams"]] == [
        (team["id"], "Research", 3)
    ]
    assert {a["id"] for a in found["top_agents"]} == {mini["id"], four["id"]}
    assert {(m["model"], m["calls"]) for m in found["models"]} == {
        ("gpt-4o-mini", 2),
        ("gpt-4o", 1),
    }
    assert all(m["average_latency_ms"] >= 0 for m in found["models"])
    assert (found["active_accounts"], found["active_users"]) == (1, 1)

    # Per hour: the points add up to the summary, one per hour of the period.
    since = datetime.now(UTC) - timedelta(hours=5)
    params = {"metric": "cost_usd", "grain": "hour", "from": since.isoformat()}
    hourly = expect(owner.get(TIMESERIES, params=params), 200)
    (series,) = hourly["series"]
    assert series["key"] is None
    assert len(series["points"]) == 6  # five hours back, and this one
    assert sum(Decimal(p["value"]) for p in series["points"]) == Decimal(usage["cost_usd"])
    by_model = expect(owner.get(TIMESERIES, params={"metric": "calls", "group_by": "model"}), 200)
    assert {s["key"]: sum(int(p["value"]) for p in s["points"]) for s in by_model["series"]} == {
        "gpt-4o": 1,
        "gpt-4o-mini": 2,
    }
    assert len(by_model["series"][0]["points"]) in (30, 31)  # the default: 30 days, by day
    failures = expect(
        owner.get(TIMESERIES, params={"metric": "failed_executions", "group_by": "strategy"}),
        200,
    )
    assert [(s["key"], sum(int(p["value"]) for p in s["points"])) for s in failures["series"]] == [
        ("sequential", 1)
    ]

    # Another account sees nothing of it, and may not ask for it.
    theirs = summary(other_owner_client)
    assert team["id"] not in {t["id"] for t in theirs["top_teams"]}
    refused = other_owner_client.get(SUMMARY, params={"account_id": fresh_account.id})
    assert_problem(refused, 403)
    assert_problem(fresh_account.member.get(SUMMARY), 403)
    assert_problem(fresh_account.viewer.get(TIMESERIES), 403)
    # An admin sees every account, or exactly this one.
    everyone = summary(admin_client)
    assert everyone["account_id"] is None
    assert everyone["executions"]["total"] >= 2
    assert everyone["active_accounts"] >= 1
    assert summary(admin_client, account_id=fresh_account.id) == found


def test_bad_periods_groupings_and_lengths_are_client_errors(owner_client: ApiClient) -> None:
    now = datetime.now(UTC)
    backwards = {"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()}
    assert pointers(assert_problem(owner_client.get(SUMMARY, params=backwards), 422)) == {
        "/query/to"
    }
    wrong_group = {"metric": "cost_usd", "group_by": "status"}
    assert pointers(assert_problem(owner_client.get(TIMESERIES, params=wrong_group), 422)) == {
        "/query/group_by"
    }
    too_long = {"grain": "hour", "from": (now - timedelta(days=200)).isoformat()}
    assert pointers(assert_problem(owner_client.get(TIMESERIES, params=too_long), 422)) == {
        "/query/grain"
    }
    assert_problem(owner_client.get(TIMESERIES, params={"metric": "happiness"}), 422)
