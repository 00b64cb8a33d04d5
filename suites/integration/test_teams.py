"""Teams and their members over HTTP: versioned workflows, every invalid definition refused
with a pointer to the bad field, the member limit, and account isolation on every route."""

from __future__ import annotations

from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect

# Both databases: versioned workflows, member limits and conflicts are written by the database.
pytestmark = pytest.mark.both_databases

TEAMS = ts.TEAMS
MAX_MEMBERS = 10  # the default of RENUM_TEAMS__MAX_MEMBERS
fresh_account = ts.fresh_account


def members_of(client: ApiClient, team: dict[str, Any]) -> list[str]:
    listed = expect(client.get(f"{TEAMS}/{team['id']}/members"), 200)
    return [m["agent_id"] for m in sorted(listed, key=lambda m: m["position"])]


def test_create_with_members_and_a_workflow_then_version_it(owner_client: ApiClient) -> None:
    first, second = ts.echo_agent(owner_client), ts.echo_agent(owner_client)
    flow = ts.workflow("sequential", [ts.step("one", first), ts.step("two", second)])
    team = ts.create_team(owner_client, [first, second], flow, description="pair")
    assert team["workflow_version"] == 1
    assert team["workflow"]["strategy"] == "sequential"
    assert [s["id"] for s in team["workflow"]["steps"]] == ["one", "two"]
    assert team["description"] == "pair"
    assert members_of(owner_client, team) == [first["id"], second["id"]]
    assert expect(owner_client.get(f"{TEAMS}/{team['id']}"), 200) == team

    reversed_flow = ts.workflow(
        "parallel",
        [ts.step("b", second), ts.step("a", first)],
        max_concurrency=1,
        failure_policy="continue",
    )
    changed = expect(
        owner_client.patch(f"{TEAMS}/{team['id']}", json={"workflow": reversed_flow}), 200
    )
    assert changed["workflow_version"] == 2
    assert changed["workflow"]["strategy"] == "parallel"
    assert changed["workflow"]["max_concurrency"] == 1

    versions = expect(owner_client.get(f"{TEAMS}/{team['id']}/workflow/versions"), 200)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["definition"]["strategy"] == "sequential"
    assert [s["id"] for s in versions[0]["definition"]["steps"]] == ["one", "two"]
    assert versions[1]["definition"] == changed["workflow"]

    # Renaming leaves the workflow version alone.
    renamed = expect(
        owner_client.patch(f"{TEAMS}/{team['id']}", json={"name": ts.unique("renamed")}), 200
    )
    assert renamed["workflow_version"] == 2
    assert len(expect(owner_client.get(f"{TEAMS}/{team['id']}/workflow/versions"), 200)) == 2


def test_team_without_workflow(owner_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    team = ts.create_team(owner_client, [agent])
    assert team["workflow"] is None
    assert team["workflow_version"] == 0
    assert expect(owner_client.get(f"{TEAMS}/{team['id']}/workflow/versions"), 200) == []


def test_list_teams(fresh_account: ts.Account) -> None:
    owner = fresh_account.owner
    agent = ts.echo_agent(owner)
    made = [ts.create_team(owner, [agent]) for _ in range(3)]
    page = expect(owner.get(TEAMS, params={"limit": 2}), 200)
    assert page["total"] == 3
    assert len(page["items"]) == 2
    rest = expect(owner.get(TEAMS, params={"limit": 2, "offset": 2}), 200)
    assert {t["id"] for t in page["items"] + rest["items"]} == {t["id"] for t in made}


def test_duplicate_team_name_conflicts(owner_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    team = ts.create_team(owner_client, [agent])
    again = owner_client.post(TEAMS, json={"name": team["name"], "agent_ids": [agent["id"]]})
    assert_problem(again, 409)
    other = ts.create_team(owner_client, [agent])
    assert_problem(owner_client.patch(f"{TEAMS}/{other['id']}", json={"name": team["name"]}), 409)


# Each case: a workflow built from the team's members a, b (and a non-member agent x), and
# the pointer the 422 must carry.
def _cases() -> list[Any]:
    def cond(**fields: Any) -> dict[str, Any]:
        return {"path": "kind", "op": "equals", "value": "bug", **fields}

    return [
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", [ts.step("s1", a), ts.step("s2", x)]),
            "/body/workflow/steps/1/agent_id",
            id="unknown-agent",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", []),
            "/body/workflow/steps",
            id="empty-steps",
        ),
        pytest.param(
            lambda a, b, x: {"strategy": "sequential"},
            "/body/workflow/steps",
            id="missing-steps",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("round_robin", [ts.step("s1", a)]),
            "/body/workflow/strategy",
            id="unknown-strategy",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("conditional", [ts.step("s1", a, when=cond(op="roughly"))]),
            "/body/workflow/steps/0/when",
            id="unknown-operator",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow(
                "conditional", [ts.step("s1", a, when=cond(op="matches", value="(unclosed"))]
            ),
            "/body/workflow/steps/0/when/value",
            id="bad-regex",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow(
                "conditional",
                [
                    ts.step(
                        "s1",
                        a,
                        when={"all": [cond(), {"any": [cond(op="matches", value="[z-a]")]}]},
                    )
                ],
            ),
            "/body/workflow/steps/0/when/all/1/any/0/value",
            id="bad-regex-nested",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow(
                "conditional", [ts.step("s1", a, when=cond(op="gt", value={"a": 1}))]
            ),
            "/body/workflow/steps/0/when/value",
            id="ordering-with-an-object",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow(
                "conditional", [ts.step("s1", a, when={"all": [cond()], "any": [cond()]})]
            ),
            "/body/workflow/steps/0/when",
            id="all-and-any",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", [ts.step("s1", a, when=cond())]),
            "/body/workflow/steps/0/when",
            id="when-on-sequential",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow(
                "parallel", [ts.step("s1", a), ts.step("s2", b, when=cond())]
            ),
            "/body/workflow/steps/1/when",
            id="when-on-parallel",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", [ts.step("same", a), ts.step("same", b)]),
            "/body/workflow/steps/1/id",
            id="duplicate-step-id",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", [ts.step("s 1", a)]),
            "/body/workflow/steps/0/id",
            id="bad-step-id",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("pipeline", [ts.step("s1", a)], max_concurrency=2),
            "/body/workflow/max_concurrency",
            id="max-concurrency-on-pipeline",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("parallel", [ts.step("s1", a)], max_concurrency=0),
            "/body/workflow/max_concurrency",
            id="max-concurrency-zero",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow(
                "pipeline", [ts.step("s1", a), ts.step("s2", b, input_template="{{ input ")]
            ),
            "/body/workflow/steps/1/input_template",
            id="template-syntax-error",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("parallel", [ts.step("s1", a)], failure_policy="retry"),
            "/body/workflow/failure_policy",
            id="unknown-failure-policy",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", [{"id": "s1"}]),
            "/body/workflow/steps/0/agent_id",
            id="step-without-agent",
        ),
        pytest.param(
            lambda a, b, x: ts.workflow("sequential", [ts.step("s1", a, retries=2)]),
            "/body/workflow/steps/0/retries",
            id="unknown-step-field",
        ),
    ]


@pytest.fixture(scope="module")
def trio(owner_client: ApiClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Two agents for the team and a third of the same account that is not a member."""
    return ts.echo_agent(owner_client), ts.echo_agent(owner_client), ts.echo_agent(owner_client)


@pytest.mark.parametrize(("build", "pointer"), _cases())
def test_invalid_workflow_is_refused_on_create_and_update(
    owner_client: ApiClient, trio: Any, build: Any, pointer: str
) -> None:
    a, b, x = trio
    flow = build(a, b, x)
    name = ts.unique("bad")
    created = owner_client.post(
        TEAMS, json={"name": name, "agent_ids": [a["id"], b["id"]], "workflow": flow}
    )
    problem = assert_problem(created, 422)
    found = pointers(problem)
    assert any(p == pointer or p.startswith(pointer + "/") for p in found), (pointer, problem)
    teams = expect(owner_client.get(TEAMS, params={"limit": 200}), 200)["items"]
    assert name not in {t["name"] for t in teams}

    good = ts.workflow("sequential", [ts.step("s1", a)])
    team = ts.create_team(owner_client, [a, b], good)
    updated = owner_client.patch(f"{TEAMS}/{team['id']}", json={"workflow": flow})
    found = pointers(assert_problem(updated, 422))
    assert any(p == pointer or p.startswith(pointer + "/") for p in found), (pointer, found)
    after = expect(owner_client.get(f"{TEAMS}/{team['id']}"), 200)
    assert after["workflow_version"] == 1
    assert after["workflow"] == team["workflow"]


def test_unknown_operator_points_at_the_operator(owner_client: ApiClient, trio: Any) -> None:
    a, _, _ = trio
    flow = ts.workflow(
        "conditional", [ts.step("s1", a, when={"path": "k", "op": "roughly", "value": 1})]
    )
    response = owner_client.post(
        TEAMS, json={"name": ts.unique("op"), "agent_ids": [a["id"]], "workflow": flow}
    )
    # One error, pointing at the operator: no schema class names or validator reprs in a
    # pointer, which must address a place in the request body.
    assert pointers(assert_problem(response, 422)) == {"/body/workflow/steps/0/when/op"}


def test_agent_ids_are_checked(
    owner_client: ApiClient, other_owner_client: ApiClient, trio: Any
) -> None:
    a, _, _ = trio
    foreign = ts.echo_agent(other_owner_client)
    response = owner_client.post(
        TEAMS, json={"name": ts.unique("t"), "agent_ids": [a["id"], foreign["id"]]}
    )
    assert pointers(assert_problem(response, 422)) == {"/body/agent_ids/1"}
    twice = owner_client.post(TEAMS, json={"name": ts.unique("t"), "agent_ids": [a["id"], a["id"]]})
    assert "/body/agent_ids" in pointers(assert_problem(twice, 422))


def test_member_limit(owner_client: ApiClient) -> None:
    owner = owner_client
    agents = [ts.echo_agent(owner) for _ in range(MAX_MEMBERS + 1)]
    too_many = owner.post(
        TEAMS, json={"name": ts.unique("big"), "agent_ids": [a["id"] for a in agents]}
    )
    assert pointers(assert_problem(too_many, 422)) == {"/body/agent_ids"}

    team = ts.create_team(owner, agents[:MAX_MEMBERS])
    assert len(members_of(owner, team)) == MAX_MEMBERS
    full = owner.post(f"{TEAMS}/{team['id']}/members", json={"agent_id": agents[-1]["id"]})
    assert "at most" in assert_problem(full, 409)["detail"]
    assert len(members_of(owner, team)) == MAX_MEMBERS


def test_add_and_remove_members(
    owner_client: ApiClient, other_owner_client: ApiClient, viewer_client: ApiClient
) -> None:
    a, b, c = (ts.echo_agent(owner_client) for _ in range(3))
    team = ts.create_team(owner_client, [a, b], ts.workflow("sequential", [ts.step("s", a)]))
    members_url = f"{TEAMS}/{team['id']}/members"

    added = expect(owner_client.post(members_url, json={"agent_id": c["id"]}), 201)
    assert added["agent_id"] == c["id"]
    assert added["position"] == 2
    assert members_of(owner_client, team) == [a["id"], b["id"], c["id"]]
    assert_problem(owner_client.post(members_url, json={"agent_id": c["id"]}), 409)

    # An agent of another account is not found, whatever its id.
    foreign = ts.echo_agent(other_owner_client)
    assert_problem(owner_client.post(members_url, json={"agent_id": foreign["id"]}), 404)
    # Viewers cannot change members.
    assert_problem(viewer_client.post(members_url, json={"agent_id": c["id"]}), 403)
    assert_problem(viewer_client.delete(f"{members_url}/{b['id']}"), 403)

    # The workflow uses a: it cannot leave; b can.
    problem = assert_problem(owner_client.delete(f"{members_url}/{a['id']}"), 409)
    assert "workflow" in problem["detail"].lower()
    expect(owner_client.delete(f"{members_url}/{b['id']}"), 204)
    assert members_of(owner_client, team) == [a["id"], c["id"]]
    assert_problem(owner_client.delete(f"{members_url}/{b['id']}"), 404)

    # Once the workflow no longer uses a, it can leave too.
    expect(
        owner_client.patch(
            f"{TEAMS}/{team['id']}",
            json={"workflow": ts.workflow("sequential", [ts.step("s", c)])},
        ),
        200,
    )
    expect(owner_client.delete(f"{members_url}/{a['id']}"), 204)
    assert members_of(owner_client, team) == [c["id"]]

    # A workflow may only name current members.
    stale = owner_client.patch(
        f"{TEAMS}/{team['id']}", json={"workflow": ts.workflow("sequential", [ts.step("s", a)])}
    )
    assert pointers(assert_problem(stale, 422)) == {"/body/workflow/steps/0/agent_id"}


def test_viewer_cannot_write_teams(owner_client: ApiClient, viewer_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    team = ts.create_team(owner_client, [agent])
    assert expect(viewer_client.get(f"{TEAMS}/{team['id']}"), 200)["id"] == team["id"]
    assert_problem(viewer_client.post(TEAMS, json={"name": ts.unique("v")}), 403)
    assert_problem(viewer_client.patch(f"{TEAMS}/{team['id']}", json={"name": "v"}), 403)
    assert_problem(viewer_client.delete(f"{TEAMS}/{team['id']}"), 403)
    assert_problem(
        viewer_client.post(f"{TEAMS}/{team['id']}/executions", json={"prompt": "hi"}), 403
    )


def test_delete_a_team(owner_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    team = ts.create_team(owner_client, [agent], ts.workflow("sequential", [ts.step("s", agent)]))
    expect(owner_client.delete(f"{TEAMS}/{team['id']}"), 204)
    for url in (
        f"{TEAMS}/{team['id']}",
        f"{TEAMS}/{team['id']}/members",
        f"{TEAMS}/{team['id']}/workflow/versions",
    ):
        assert_problem(owner_client.get(url), 404)
    # Its agent is free again.
    expect(owner_client.delete(f"{ts.AGENTS}/{agent['id']}"), 204)


def test_other_accounts_get_404_on_every_team_route(
    owner_client: ApiClient, other_owner_client: ApiClient
) -> None:
    agent = ts.echo_agent(owner_client)
    team = ts.create_team(owner_client, [agent], ts.workflow("sequential", [ts.step("s", agent)]))
    theirs = ts.echo_agent(other_owner_client)
    url = f"{TEAMS}/{team['id']}"
    attempts = [
        other_owner_client.get(url),
        other_owner_client.patch(url, json={"name": "stolen"}),
        other_owner_client.delete(url),
        other_owner_client.get(f"{url}/workflow/versions"),
        other_owner_client.get(f"{url}/members"),
        other_owner_client.post(f"{url}/members", json={"agent_id": theirs["id"]}),
        other_owner_client.delete(f"{url}/members/{agent['id']}"),
        other_owner_client.post(f"{url}/executions", json={"prompt": "hi"}),
    ]
    for response in attempts:
        assert_problem(response, 404)
    listed = expect(other_owner_client.get(TEAMS, params={"limit": 200}), 200)["items"]
    assert team["id"] not in {t["id"] for t in listed}
    assert expect(owner_client.get(url), 200) == team
    assert members_of(owner_client, team) == [agent["id"]]
