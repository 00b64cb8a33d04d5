"""Agents over HTTP: builtin and model agents created, read, changed and deleted within the
caller's account; definitions the schema alone cannot judge refused with a pointer; viewers
read only; other accounts see nothing."""

from __future__ import annotations

from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect

AGENTS = ts.AGENTS
fresh_account = ts.fresh_account


def test_create_and_read_builtin_agents(owner_client: ApiClient) -> None:
    echo = ts.echo_agent(owner_client, description="repeats", system_prompt="be brief")
    assert echo["provider"] == "builtin"
    assert echo["model"] == "echo"
    assert echo["description"] == "repeats"
    assert echo["system_prompt"] == "be brief"
    assert echo["base_url"] is None
    assert echo["provider_key_id"] is None
    assert echo["retry"]["max_attempts"] >= 1
    assert echo["timeout_seconds"] > 0

    template = ts.template_agent(
        owner_client, "Hi {{ input }}", parameters={"output_key": "greeting"}
    )
    assert template["model"] == "template"
    assert template["parameters"] == {"template": "Hi {{ input }}", "output_key": "greeting"}

    for created in (echo, template):
        assert expect(owner_client.get(f"{AGENTS}/{created['id']}"), 200) == created


def test_update_an_agent(owner_client: ApiClient) -> None:
    agent = ts.template_agent(owner_client, "v1 {{ input }}")
    new_name = ts.unique("renamed")
    changed = expect(
        owner_client.patch(
            f"{AGENTS}/{agent['id']}",
            json={
                "name": new_name,
                "description": "second",
                "parameters": {"template": "v2 {{ input }}"},
                "timeout_seconds": 5,
            },
        ),
        200,
    )
    assert changed["name"] == new_name
    assert changed["description"] == "second"
    assert changed["parameters"] == {"template": "v2 {{ input }}"}
    assert changed["timeout_seconds"] == 5
    assert changed["model"] == "template"
    assert expect(owner_client.get(f"{AGENTS}/{agent['id']}"), 200) == changed

    # A change is checked against the merged agent: the template must still parse ...
    broken = owner_client.patch(
        f"{AGENTS}/{agent['id']}", json={"parameters": {"template": "{% if %}"}}
    )
    assert pointers(assert_problem(broken, 422)) == {"/body/parameters/template"}
    # ... a builtin agent still takes no base URL ...
    with_url = owner_client.patch(
        f"{AGENTS}/{agent['id']}", json={"base_url": "http://127.0.0.1:9/v1"}
    )
    assert pointers(assert_problem(with_url, 422)) == {"/body/base_url"}
    # ... and a required field cannot be cleared.
    cleared = owner_client.patch(f"{AGENTS}/{agent['id']}", json={"name": None})
    assert pointers(assert_problem(cleared, 422)) == {"/body/name"}
    assert expect(owner_client.get(f"{AGENTS}/{agent['id']}"), 200) == changed


def test_viewer_reads_but_cannot_write(owner_client: ApiClient, viewer_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    assert expect(viewer_client.get(f"{AGENTS}/{agent['id']}"), 200)["id"] == agent["id"]
    listed = expect(viewer_client.get(AGENTS, params={"limit": 200}), 200)
    assert listed["total"] >= 1

    body = {"name": ts.unique("viewer"), "provider": "builtin", "model": "echo"}
    assert_problem(viewer_client.post(AGENTS, json=body), 403)
    assert_problem(viewer_client.patch(f"{AGENTS}/{agent['id']}", json={"name": "x"}), 403)
    assert_problem(viewer_client.delete(f"{AGENTS}/{agent['id']}"), 403)
    assert expect(owner_client.get(f"{AGENTS}/{agent['id']}"), 200) == agent


def test_member_can_write(member_client: ApiClient) -> None:
    agent = ts.echo_agent(member_client)
    expect(member_client.delete(f"{AGENTS}/{agent['id']}"), 204)
    assert_problem(member_client.get(f"{AGENTS}/{agent['id']}"), 404)


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        pytest.param({"model": "shell"}, "/body/model", id="unknown-builtin-kind"),
        pytest.param(
            {"model": "template", "parameters": {"template": "{{ input "}},
            "/body/parameters/template",
            id="template-syntax-error",
        ),
        pytest.param(
            {"model": "template", "parameters": {}},
            "/body/parameters/template",
            id="template-missing",
        ),
        pytest.param(
            {"model": "echo", "base_url": "http://127.0.0.1:9/v1"},
            "/body/base_url",
            id="builtin-with-base-url",
        ),
        pytest.param(
            {"model": "echo", "provider_key_id": "00000000-0000-4000-8000-000000000000"},
            "/body/provider_key_id",
            id="builtin-with-key",
        ),
        pytest.param(
            {"provider": "openai", "model": "gpt-4o-mini", "parameters": {"template": "x"}},
            "/body/parameters/template",
            id="template-on-model-agent",
        ),
        pytest.param(
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "provider_key_id": "00000000-0000-4000-8000-000000000000",
            },
            "/body/provider_key_id",
            id="unknown-provider-key",
        ),
        pytest.param({"provider": "anthropic"}, "/body/provider", id="unknown-provider"),
        pytest.param({"temperature": 1}, "/body/temperature", id="unknown-field"),
        pytest.param({"parameters": {"temperature": 3}}, "/body/parameters/temperature", id="temp"),
        pytest.param({"timeout_seconds": 0}, "/body/timeout_seconds", id="timeout"),
        pytest.param({"base_url": "not a url", "provider": "openai"}, "/body/base_url", id="url"),
    ],
)
def test_invalid_agents_are_refused_with_a_pointer(
    owner_client: ApiClient, fields: dict[str, Any], pointer: str
) -> None:
    body = {"name": ts.unique("bad"), "provider": "builtin", "model": "echo", **fields}
    problem = assert_problem(owner_client.post(AGENTS, json=body), 422)
    assert pointer in pointers(problem), problem
    listed = expect(owner_client.get(AGENTS, params={"limit": 200}), 200)["items"]
    assert body["name"] not in {a["name"] for a in listed}


def test_model_agent_cannot_use_another_users_or_accounts_key(
    owner_client: ApiClient,
    member_client: ApiClient,
    other_owner_client: ApiClient,
) -> None:
    owners_key = ts.create_key(owner_client, ts.new_secret())
    others_key = ts.create_key(other_owner_client, ts.new_secret())
    members_key = ts.create_key(member_client, ts.new_secret())

    def attempt(client: ApiClient, key: dict[str, Any]) -> Any:
        body = {
            "name": ts.unique("paid"),
            "provider": "openai",
            "model": "gpt-4o-mini",
            "provider_key_id": key["id"],
        }
        return client.post(AGENTS, json=body)

    # Another account's key does not exist for this account.
    problem = assert_problem(attempt(owner_client, others_key), 422)
    assert pointers(problem) == {"/body/provider_key_id"}
    # A member may not spend the owner's key.
    problem = assert_problem(attempt(member_client, owners_key), 422)
    assert pointers(problem) == {"/body/provider_key_id"}
    # One's own key is fine.
    agent = expect(attempt(member_client, members_key), 201)
    assert agent["provider_key_id"] == members_key["id"]
    # Switching an agent to someone else's key is refused the same way.
    switched = member_client.patch(
        f"{AGENTS}/{agent['id']}", json={"provider_key_id": owners_key["id"]}
    )
    assert pointers(assert_problem(switched, 422)) == {"/body/provider_key_id"}
    assert (
        expect(member_client.get(f"{AGENTS}/{agent['id']}"), 200)["provider_key_id"]
        == (members_key["id"])
    )


@pytest.mark.both_databases  # constraints
def test_duplicate_name_conflicts(owner_client: ApiClient, member_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    again = {"name": agent["name"], "provider": "builtin", "model": "echo"}
    assert_problem(member_client.post(AGENTS, json=again), 409)
    other = ts.echo_agent(owner_client)
    renamed = owner_client.patch(f"{AGENTS}/{other['id']}", json={"name": agent["name"]})
    assert_problem(renamed, 409)
    assert expect(owner_client.get(f"{AGENTS}/{other['id']}"), 200)["name"] == other["name"]


def test_same_name_in_another_account_is_fine(
    owner_client: ApiClient, other_owner_client: ApiClient
) -> None:
    agent = ts.echo_agent(owner_client)
    twin = ts.echo_agent(other_owner_client, name=agent["name"])
    assert twin["id"] != agent["id"]


@pytest.mark.both_databases  # constraints
def test_delete_is_refused_while_the_agent_is_in_a_team(owner_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    team = ts.create_team(owner_client, [agent])
    problem = assert_problem(owner_client.delete(f"{AGENTS}/{agent['id']}"), 409)
    assert "team" in problem["detail"].lower()
    assert expect(owner_client.get(f"{AGENTS}/{agent['id']}"), 200)["id"] == agent["id"]

    expect(owner_client.delete(f"{ts.TEAMS}/{team['id']}"), 204)
    expect(owner_client.delete(f"{AGENTS}/{agent['id']}"), 204)
    assert_problem(owner_client.get(f"{AGENTS}/{agent['id']}"), 404)
    assert_problem(owner_client.delete(f"{AGENTS}/{agent['id']}"), 404)


def test_pagination_and_provider_filter(fresh_account: ts.Account) -> None:
    owner = fresh_account.owner
    builtin = [ts.echo_agent(owner) for _ in range(3)]
    models = [
        ts.create_agent(owner, provider="openai", model="gpt-4o-mini", name=ts.unique("m"))
        for _ in range(2)
    ]
    everything = expect(owner.get(AGENTS, params={"limit": 200}), 200)
    assert everything["total"] == 5
    assert {a["id"] for a in everything["items"]} == {a["id"] for a in builtin + models}

    seen: list[str] = []
    for offset in (0, 2, 4):
        page = expect(owner.get(AGENTS, params={"limit": 2, "offset": offset}), 200)
        assert page["total"] == 5
        assert page["limit"] == 2
        assert page["offset"] == offset
        assert len(page["items"]) == (1 if offset == 4 else 2)
        seen += [a["id"] for a in page["items"]]
    assert sorted(seen) == sorted(a["id"] for a in everything["items"]), "pages overlap"

    only_models = expect(owner.get(AGENTS, params={"provider": "openai"}), 200)
    assert only_models["total"] == 2
    assert {a["id"] for a in only_models["items"]} == {a["id"] for a in models}
    only_builtin = expect(owner.get(AGENTS, params={"provider": "builtin"}), 200)
    assert only_builtin["total"] == 3
    assert all(a["provider"] == "builtin" for a in only_builtin["items"])

    for params in ({"provider": "anthropic"}, {"limit": 0}, {"offset": -1}):
        assert_problem(owner.get(AGENTS, params=params), 422)


def test_other_accounts_see_nothing(owner_client: ApiClient, other_owner_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    url = f"{AGENTS}/{agent['id']}"
    assert_problem(other_owner_client.get(url), 404)
    assert_problem(other_owner_client.patch(url, json={"name": "stolen"}), 404)
    assert_problem(other_owner_client.delete(url), 404)
    listed = expect(other_owner_client.get(AGENTS, params={"limit": 200}), 200)["items"]
    assert agent["id"] not in {a["id"] for a in listed}
    assert expect(owner_client.get(url), 200) == agent


def test_anonymous_is_refused(client: ApiClient) -> None:
    assert_problem(client.get(AGENTS), 401)
    assert_problem(client.post(AGENTS, json={"name": "x", "provider": "builtin"}), 401)


# -- base URLs and whose key pays -------------------------------------------------------------

ELSEWHERE = "https://llm.example.com/v1"  # a public name: fine to store, never called here


def model_body(**fields: Any) -> dict[str, Any]:
    return {"name": ts.unique("model"), "provider": "openai", "model": "gpt-4o-mini", **fields}


def test_an_agent_off_the_platform_url_needs_its_own_key(
    member_client: ApiClient, fake_openai: Any
) -> None:
    problem = assert_problem(member_client.post(AGENTS, json=model_body(base_url=ELSEWHERE)), 422)
    assert pointers(problem) == {"/body/provider_key_id"}
    assert "provider_key_id" in problem["errors"][0]["message"]
    # A path that only starts like the platform's is elsewhere too: refused by the key rule,
    # or (on a backend that does not allowlist the fake server) by the egress check first.
    evil = fake_openai.base_url + "evil"
    problem = assert_problem(member_client.post(AGENTS, json=model_body(base_url=evil)), 422)
    assert len(pointers(problem) & {"/body/provider_key_id", "/body/base_url"}) == 1
    # The platform's own URL (or none) takes the platform's key.
    for base_url in (None, fake_openai.base_url, fake_openai.base_url + "/"):
        expect(member_client.post(AGENTS, json=model_body(base_url=base_url)), 201)
    key = ts.create_key(member_client, ts.new_secret())
    agent = expect(
        member_client.post(AGENTS, json=model_body(base_url=ELSEWHERE, provider_key_id=key["id"])),
        201,
    )
    assert agent["provider_key_id"] == key["id"]


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("http://127.0.0.1:8000/v1", id="loopback"),
        pytest.param("http://[::1]/v1", id="v6-loopback"),
        pytest.param("http://[::ffff:127.0.0.1]/v1", id="v4-mapped"),
        pytest.param("http://2130706433/v1", id="decimal"),
        pytest.param("http://0177.0.0.1/v1", id="octal"),
        pytest.param("http://169.254.169.254/latest", id="metadata"),
        pytest.param("http://10.0.0.7/v1", id="private"),
        pytest.param("http://[fd00::1]/v1", id="unique-local"),
        pytest.param("https://llm.example.com:8443/v1", id="port"),
        pytest.param("https://llm.example.com/v1?api-version=1", id="query"),
        pytest.param("https://llm.example.com/v1#x", id="fragment"),
        pytest.param("https://user:pw@llm.example.com/v1", id="userinfo"),
        pytest.param("http://llm.example.com@127.0.0.1/v1", id="userinfo-trick"),
    ],
)
def test_a_base_url_the_egress_policy_refuses_is_a_422(
    member_client: ApiClient, base_url: str
) -> None:
    key = ts.create_key(member_client, ts.new_secret())
    body = model_body(base_url=base_url, provider_key_id=key["id"])
    problem = assert_problem(member_client.post(AGENTS, json=body), 422)
    assert pointers(problem) == {"/body/base_url"}, problem
    assert "egress policy" in problem["errors"][0]["message"]


def test_an_update_is_checked_in_its_merged_state(
    member_client: ApiClient, fake_openai: Any
) -> None:
    key = ts.create_key(member_client, ts.new_secret())
    body = model_body(base_url=ELSEWHERE, provider_key_id=key["id"])
    agent = expect(member_client.post(AGENTS, json=body), 201)
    url = f"{AGENTS}/{agent['id']}"
    # Dropping the key while the URL stays elsewhere is refused ...
    dropped = member_client.patch(url, json={"provider_key_id": None})
    assert pointers(assert_problem(dropped, 422)) == {"/body/provider_key_id"}
    # ... so is a refused URL ...
    moved = member_client.patch(url, json={"base_url": "http://127.0.0.1:6379/"})
    assert pointers(assert_problem(moved, 422)) == {"/body/base_url"}
    assert expect(member_client.get(url), 200) == agent
    # ... and a key-less agent moved off the platform.
    keyless = expect(member_client.post(AGENTS, json=model_body()), 201)
    away = member_client.patch(f"{AGENTS}/{keyless['id']}", json={"base_url": ELSEWHERE})
    assert pointers(assert_problem(away, 422)) == {"/body/provider_key_id"}
    # Back to the platform, the key may go.
    back = {"base_url": fake_openai.base_url, "provider_key_id": None}
    changed = expect(member_client.patch(url, json=back), 200)
    assert changed["provider_key_id"] is None
