"""A finished execution of a fixed builtin team, as the API reports it: its steps, its shared
context and its event stream, with ids and times replaced by placeholders.

The team is ``conditional`` with three steps: ``draft`` (echo, through an input template),
``review`` (a template that writes ``verdict`` to the context) and ``escalate`` (guarded by
``verdict == "reject"``, so it is skipped). The one snapshot holds on every database flavour
(``--db=sqlite,postgresql``): nothing in it may depend on the database.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pytest_regressions.data_regression import DataRegressionFixture

from qa.client import API, ApiClient
from qa.factories import create_agent, expect, unique

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME_FIELDS = {"created_at", "started_at", "finished_at", "updated_at"}

REVIEW_TEMPLATE = (
    "{{ remember('verdict', 'approve') }}"
    "{{ remember('reviewed_by', variables.reviewer) }}"
    "{{ variables.reviewer }} approves: {{ input }}"
)


def normalise(value: Any, names: dict[str, str]) -> Any:
    """Known ids to their names, other ids to ``<uuid>``, times to ``<time>``."""
    if isinstance(value, dict):
        return {
            key: ("<time>" if item is not None else None)
            if key in TIME_FIELDS
            else normalise(item, names)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [normalise(item, names) for item in value]
    if isinstance(value, str):
        return UUID.sub(lambda m: names.get(m.group(0), "<uuid>"), value)
    return value


def test_conditional_execution_snapshot(
    owner_client: ApiClient, data_regression: DataRegressionFixture, request: pytest.FixtureRequest
) -> None:
    echo = create_agent(owner_client, "drafter", model="echo")
    reviewer = create_agent(
        owner_client, "reviewer", model="template", parameters={"template": REVIEW_TEMPLATE}
    )
    escalator = create_agent(owner_client, "escalator", model="echo")
    workflow = {
        "strategy": "conditional",
        "steps": [
            {
                "id": "draft",
                "agent_id": echo["id"],
                "input_template": "Draft by {{ variables.reviewer }}'s team: {{ prompt }}",
            },
            {"id": "review", "agent_id": reviewer["id"]},
            {
                "id": "escalate",
                "agent_id": escalator["id"],
                "when": {
                    "any": [
                        {"path": "verdict", "op": "equals", "value": "reject"},
                        {"path": "reviewed_by", "op": "not_exists"},
                    ]
                },
            },
        ],
    }
    agents = [echo, reviewer, escalator]
    team = expect(
        owner_client.post(
            f"{API}/teams",
            json={
                "name": unique("snapshot"),
                "agent_ids": [a["id"] for a in agents],
                "workflow": workflow,
            },
        ),
        201,
    )
    started = owner_client.post(
        f"{API}/teams/{team['id']}/executions",
        params={"wait": 10},
        json={"prompt": "Summarise the quarter", "variables": {"reviewer": "Ada"}},
    )
    execution = expect(started, 202)
    if execution["status"] not in {"completed", "failed", "cancelled", "timed_out"}:
        execution = expect(
            owner_client.get(f"{API}/executions/{execution['id']}", params={"wait": 20}), 200
        )
    context = expect(owner_client.get(f"{API}/executions/{execution['id']}/context"), 200)
    events = expect(owner_client.get(f"{API}/executions/{execution['id']}/events"), 200)

    names = {
        execution["id"]: "<execution>",
        team["id"]: "<team>",
        echo["id"]: "<agent:drafter>",
        reviewer["id"]: "<agent:reviewer>",
        escalator["id"]: "<agent:escalator>",
    }
    snapshot = {
        "execution": {
            key: execution[key]
            for key in (
                "team_id",
                "workflow_version",
                "strategy",
                "status",
                "status_reason",
                "prompt",
                "variables",
                "result",
                "error",
                "progress",
                "input_tokens",
                "output_tokens",
                "cost_usd",
                "started_at",
                "finished_at",
            )
        },
        "steps": [
            {
                key: step[key]
                for key in (
                    "step_key",
                    "position",
                    "agent_id",
                    "status",
                    "attempts",
                    "input",
                    "output",
                    "error",
                    "input_tokens",
                    "output_tokens",
                    "cost_usd",
                    "started_at",
                    "finished_at",
                )
            }
            for step in execution["steps"]
        ],
        "context": {
            "current": context["current"],
            "history": [
                {k: h[k] for k in ("key", "version", "value", "step_key", "agent_id")}
                for h in context["history"]
            ],
        },
        "events": [{k: e[k] for k in ("seq", "type", "data")} for e in events],
    }
    data_regression.check(normalise(snapshot, names), basename=request.node.originalname)
