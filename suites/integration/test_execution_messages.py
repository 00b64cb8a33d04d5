"""Messages between agents over HTTP: direct, broadcast, request/response with correlation ids
and deadlines, a step's output sent to other steps, persisted and visible through
``/executions/{id}/messages`` and the event stream, and only to the execution's account."""

from __future__ import annotations

from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Reply

# Both databases: messages persisted by the engine, their deadlines and ordering, on each database.
pytestmark = pytest.mark.both_databases

ASKER = (
    "{% set cid = ask('review', 'Is ' ~ input ~ ' clear?', 30) %}"
    "{{ send('review', {'draft': 1}) }}{{ broadcast('starting') }}drafted"
)
ANSWERER = (
    "{% for m in inbox %}{% if m.kind == 'request' %}{{ reply(m, 'yes, clear') }}{% endif %}"
    "{% endfor %}reviewed {{ inbox | length }}"
)
READER = "{% for m in inbox %}{{ m.kind }}={{ m.body }};{% endfor %}"


def messages_of(client: ApiClient, execution_id: str, **params: Any) -> list[dict[str, Any]]:
    return expect(client.get(f"{ts.EXECUTIONS}/{execution_id}/messages", params=params), 200)


def conversation(client: ApiClient) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """writer asks and tells reviewer, broadcasts; reviewer replies; writer reads its inbox;
    editor (a third agent) reads the broadcast."""
    agents = {
        "writer": ts.template_agent(client, ASKER),
        "reviewer": ts.template_agent(client, ANSWERER),
        "reader": ts.template_agent(client, READER),
    }
    steps = [
        ts.step("draft", agents["writer"]),
        ts.step("review", agents["reviewer"]),
        ts.step("editor", agents["reader"]),
    ]
    team = ts.create_team(client, list(agents.values()), ts.workflow("sequential", steps))
    return ts.run_to_end(client, team, "the plan"), agents


def test_direct_broadcast_and_request_response_are_delivered_and_recorded(
    owner_client: ApiClient,
) -> None:
    execution, agents = conversation(owner_client)
    assert execution["status"] == "completed", execution
    outputs = {s["step_key"]: s["output"] for s in execution["steps"]}
    # The reviewer saw the request, the direct message and the broadcast.
    assert outputs["review"] == "reviewed 3"
    assert outputs["editor"] == "broadcast=starting;"

    messages = messages_of(owner_client, execution["id"])
    assert [m["seq"] for m in messages] == [1, 2, 3, 4]
    request, direct, broadcast, response = messages
    writer, reviewer = agents["writer"]["id"], agents["reviewer"]["id"]
    assert (request["kind"], request["status"], request["body"]) == (
        "request", "answered", "Is the plan clear?",
    )  # fmt: skip
    assert request["sender_agent_id"] == writer
    assert request["recipient_agent_id"] == reviewer
    assert request["expires_at"] is not None
    assert (direct["kind"], direct["body"], direct["status"]) == (
        "direct",
        {"draft": 1},
        "delivered",
    )
    assert (broadcast["kind"], broadcast["recipient_agent_id"]) == ("broadcast", None)
    assert response["kind"] == "response"
    assert response["correlation_id"] == request["correlation_id"]
    assert (response["sender_step"], response["recipient_agent_id"]) == ("review", writer)
    assert response["body"] == "yes, clear"

    events = ts.events_of(owner_client, execution["id"])
    sent = [e["data"] for e in events if e["type"] == "message"]
    assert [(d["seq"], d["kind"]) for d in sent] == [
        (1, "request"), (2, "direct"), (3, "broadcast"), (4, "response"),
    ]  # fmt: skip
    assert sent[3]["correlation_id"] == request["correlation_id"]
    # Each message event comes with its step's completion, before the next step starts.
    types = ts.event_types(events)
    assert types.index("message") > types.index("step_started")
    assert types.index("message") < [i for i, t in enumerate(types) if t == "step_started"][1]


def test_messages_filter_by_kind_agent_and_position(owner_client: ApiClient) -> None:
    execution, agents = conversation(owner_client)
    execution_id = execution["id"]
    kinds = [m["kind"] for m in messages_of(owner_client, execution_id, kind="response")]
    assert kinds == ["response"]
    reader = messages_of(owner_client, execution_id, agent_id=agents["reader"]["id"])
    assert [m["kind"] for m in reader] == ["broadcast"]
    writer = messages_of(owner_client, execution_id, agent_id=agents["writer"]["id"])
    assert [m["seq"] for m in writer] == [1, 2, 3, 4]
    assert [m["seq"] for m in messages_of(owner_client, execution_id, after=2, limit=1)] == [3]


def test_an_unanswered_request_times_out_when_the_execution_ends(owner_client: ApiClient) -> None:
    asker = ts.template_agent(owner_client, "{% set cid = ask('quiet', 'anyone?', 600) %}asked")
    quiet = ts.echo_agent(owner_client)
    team = ts.create_team(
        owner_client,
        [asker, quiet],
        ts.workflow("sequential", [ts.step("ask", asker), ts.step("quiet", quiet)]),
    )
    execution = ts.run_to_end(owner_client, team)
    assert execution["status"] == "completed", execution
    [request] = messages_of(owner_client, execution["id"])
    assert (request["kind"], request["status"]) == ("request", "timed_out")
    events = ts.events_of(owner_client, execution["id"])
    [timed_out] = [e["data"] for e in events if e["type"] == "message_timed_out"]
    assert timed_out == {
        "id": request["id"],
        "correlation_id": request["correlation_id"],
        "reason": "the execution ended",
    }
    assert ts.event_types(events)[-1] == "execution_completed"


def test_send_output_to_delivers_a_model_agents_output(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply("a finding"), Reply("noted"))
    researcher = ts.model_agent(owner_client, fake_openai.base_url)
    reporter = ts.model_agent(owner_client, fake_openai.base_url)
    reader = ts.template_agent(owner_client, READER)
    steps = [
        ts.step("research", researcher, send_output_to=["report", "*"]),
        ts.step("report", reporter),
        ts.step("read", reader),
    ]
    team = ts.create_team(
        owner_client, [researcher, reporter, reader], ts.workflow("sequential", steps)
    )
    execution = ts.run_to_end(owner_client, team)
    assert execution["status"] == "completed", execution
    kinds = [(m["kind"], m["body"]) for m in messages_of(owner_client, execution["id"])]
    assert kinds == [("direct", "a finding"), ("broadcast", "a finding")]
    # The reporter (a model agent) got both in its prompt; the reader saw the broadcast only.
    chats = fake_openai.completions
    second = chats[-1].json["messages"]
    mail = [m["content"] for m in second if m["content"].startswith("Messages from other")]
    assert len(mail) == 1
    assert mail[0].count("a finding") == 2
    assert ts.steps_by_key(execution)["read"]["output"] == "broadcast=a finding;"


def test_a_model_agent_answers_a_request_with_its_output(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Reply("forty-two"))
    asker = ts.template_agent(owner_client, "{% set cid = ask('oracle', 'the answer?', 60) %}")
    oracle = ts.model_agent(owner_client, fake_openai.base_url)
    reader = ts.template_agent(owner_client, READER)
    steps = [ts.step("ask", asker), ts.step("oracle", oracle), ts.step("read", reader)]
    team = ts.create_team(owner_client, [asker, oracle, reader], ts.workflow("sequential", steps))
    execution = ts.run_to_end(owner_client, team)
    assert execution["status"] == "completed", execution
    request, response = messages_of(owner_client, execution["id"])
    assert (request["kind"], request["status"]) == ("request", "answered")
    assert (response["kind"], response["body"]) == ("response", "forty-two")
    assert response["correlation_id"] == request["correlation_id"]
    assert response["recipient_agent_id"] == asker["id"]
    prompt = [m["content"] for m in fake_openai.completions[-1].json["messages"]]
    assert any("the answer?" in text for text in prompt)


def test_a_message_to_an_unknown_recipient_fails_its_step(owner_client: ApiClient) -> None:
    lost = ts.template_agent(owner_client, "{{ send('nobody', 'hello?') }}")
    team = ts.create_team(owner_client, [lost], ts.workflow("sequential", [ts.step("s", lost)]))
    execution = ts.run_to_end(owner_client, team)
    assert execution["status"] == "failed"
    error = ts.steps_by_key(execution)["s"]["error"]
    assert "send(): unknown recipient 'nobody'" in error
    assert messages_of(owner_client, execution["id"]) == []


def test_send_output_to_an_unknown_step_is_refused(owner_client: ApiClient) -> None:
    agent = ts.echo_agent(owner_client)
    flow = ts.workflow("sequential", [ts.step("a", agent, send_output_to=["*", "ghost"])])
    body = {"name": ts.unique("team"), "agent_ids": [agent["id"]], "workflow": flow}
    problem = assert_problem(owner_client.post(ts.TEAMS, json=body), 422)
    assert pointers(problem) == {"/body/workflow/steps/0/send_output_to/1"}


def test_messages_are_private_to_the_account(
    owner_client: ApiClient, other_owner_client: ApiClient
) -> None:
    execution, _ = conversation(owner_client)
    response = other_owner_client.get(f"{ts.EXECUTIONS}/{execution['id']}/messages")
    assert_problem(response, 404)
    assert_problem(owner_client.get(f"{ts.EXECUTIONS}/{execution['id']}/messages?limit=0"), 422)
