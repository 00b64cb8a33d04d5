"""Executions end to end over HTTP: every strategy with builtin agents, what an execution
records (steps, context with provenance, ordered events, JSON and Server-Sent Events), failures,
parallel writers on one context key, and model agents against the fake OpenAI server."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, log_events, pointers

from qa.client import ApiClient
from qa.factories import expect
from qa.fake_openai import Fail, FakeOpenAI, Held, Reply, Slow
from qa.launcher import Backend

# Both databases: the engine (strategies, concurrent context writers, events, resumes).
pytestmark = pytest.mark.both_databases

EXECUTIONS = ts.EXECUTIONS


def assert_ordered_events(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    stamps = [ts.when(e["created_at"]) for e in events]
    assert stamps == sorted(stamps), "events out of time order"


def assert_finished_cleanly(execution: dict[str, Any]) -> None:
    """Status completed, every step completed, progress 1.0, coherent timings."""
    assert execution["status"] == "completed", execution
    assert execution["status_reason"] == "completed"
    assert execution["error"] is None
    assert execution["progress"] == 1.0
    created = ts.when(execution["created_at"])
    started = ts.when(execution["started_at"])
    finished = ts.when(execution["finished_at"])
    assert created is not None
    assert started is not None
    assert finished is not None
    assert created <= started <= finished
    for step in execution["steps"]:
        assert step["status"] == "completed", step
        assert step["error"] is None
        assert started <= ts.when(step["started_at"]) <= ts.when(step["finished_at"]) <= finished


# -- strategies -------------------------------------------------------------------------------


def test_sequential_steps_see_the_prompt_and_the_context(owner_client: ApiClient) -> None:
    a = ts.template_agent(owner_client, "A saw {{ input }}{{ remember('seen_by_a', input) }}")
    b = ts.template_agent(
        owner_client, "B saw {{ input }}, A noted {{ context.seen_by_a }} for {{ variables.who }}"
    )
    team = ts.create_team(
        owner_client, [a, b], ts.workflow("sequential", [ts.step("a", a), ts.step("b", b)])
    )
    execution = ts.start(owner_client, team, "the prompt", variables={"who": "ops"})
    assert_finished_cleanly(execution)
    assert execution["strategy"] == "sequential"
    assert execution["workflow_version"] == 1
    assert execution["team_id"] == team["id"]
    assert execution["prompt"] == "the prompt"
    assert execution["variables"] == {"who": "ops"}
    steps = ts.steps_by_key(execution)
    assert [s["step_key"] for s in execution["steps"]] == ["a", "b"]
    assert [s["position"] for s in execution["steps"]] == [0, 1]
    assert steps["a"]["agent_id"] == a["id"]
    assert steps["a"]["input"] == "the prompt"
    assert steps["a"]["output"] == "A saw the prompt"
    assert steps["b"]["input"] == "the prompt"
    assert steps["b"]["output"] == "B saw the prompt, A noted the prompt for ops"
    assert ts.when(steps["a"]["finished_at"]) <= ts.when(steps["b"]["started_at"])
    assert execution["result"] == "B saw the prompt, A noted the prompt for ops"
    assert (execution["input_tokens"], execution["output_tokens"]) == (0, 0)
    assert execution["cost_usd"] == "0"

    # The same state from every read.
    assert ts.get_execution(owner_client, execution["id"]) == execution
    assert (
        expect(owner_client.get(f"{EXECUTIONS}/{execution['id']}/steps"), 200)
        == (execution["steps"])
    )
    events = ts.events_of(owner_client, execution["id"])
    assert_ordered_events(events)
    assert ts.event_types(events) == [
        "execution_started",
        "step_started",
        "step_completed",
        "context_updated",
        "step_started",
        "step_completed",
        "execution_completed",
    ]
    assert [e["data"].get("step") for e in events[1:6]] == ["a", "a", "a", "b", "b"]
    assert events[0]["data"]["workflow_version"] == 1
    assert events[3]["data"] == {"key": "seen_by_a", "version": 1, "step": "a"}
    assert events[-1]["data"]["status"] == "completed"

    context = ts.context_of(owner_client, execution["id"])
    assert context["current"] == {"seen_by_a": "the prompt"}
    [write] = context["history"]
    assert write["key"] == "seen_by_a"
    assert write["version"] == 1
    assert write["value"] == "the prompt"
    assert write["step_key"] == "a"
    assert write["agent_id"] == a["id"]


def test_a_team_without_workflow_runs_its_members_in_order(owner_client: ApiClient) -> None:
    first = ts.template_agent(owner_client, "1:{{ input }}")
    second = ts.template_agent(owner_client, "2:{{ input }}")
    team = ts.create_team(owner_client, [first, second])
    execution = ts.start(owner_client, team, "p")
    assert_finished_cleanly(execution)
    assert execution["workflow_version"] == 0
    assert execution["strategy"] == "sequential"
    assert [(s["agent_id"], s["output"]) for s in execution["steps"]] == [
        (first["id"], "1:p"),
        (second["id"], "2:p"),
    ]
    assert execution["result"] == "2:p"


def test_pipeline_passes_each_output_on(owner_client: ApiClient) -> None:
    one = ts.template_agent(owner_client, "one({{ input }})")
    relay = ts.echo_agent(owner_client)
    three = ts.template_agent(owner_client, "three({{ input }})", parameters={"output_key": "end"})
    flow = ts.workflow(
        "pipeline",
        [
            ts.step("first", one),
            ts.step(
                "second",
                relay,
                input_template="{{ input }}+{{ variables.suffix }} (asked: {{ prompt }})",
            ),
            ts.step("third", three),
        ],
    )
    team = ts.create_team(owner_client, [one, relay, three], flow)
    execution = ts.start(owner_client, team, "p", variables={"suffix": "s"})
    assert_finished_cleanly(execution)
    assert execution["strategy"] == "pipeline"
    steps = ts.steps_by_key(execution)
    assert steps["first"]["input"] == "p"
    assert steps["first"]["output"] == "one(p)"
    assert steps["second"]["input"] == "one(p)+s (asked: p)"
    assert steps["second"]["output"] == "one(p)+s (asked: p)"
    assert steps["third"]["input"] == "one(p)+s (asked: p)"
    assert execution["result"] == "three(one(p)+s (asked: p))"
    assert ts.context_of(owner_client, execution["id"])["current"] == {
        "end": "three(one(p)+s (asked: p))"
    }


def test_parallel_gathers_every_output(owner_client: ApiClient) -> None:
    agents = [ts.template_agent(owner_client, f"{{{{ input }}}}/{n}") for n in range(3)]
    flow = ts.workflow("parallel", [ts.step(f"p{n}", a) for n, a in enumerate(agents)])
    team = ts.create_team(owner_client, agents, flow)
    execution = ts.start(owner_client, team, "x")
    assert_finished_cleanly(execution)
    assert execution["strategy"] == "parallel"
    assert execution["result"] == {"outputs": {"p0": "x/0", "p1": "x/1", "p2": "x/2"}, "failed": []}
    assert all(s["input"] == "x" for s in execution["steps"])
    events = ts.events_of(owner_client, execution["id"])
    assert_ordered_events(events)
    types = ts.event_types(events)
    assert types[0] == "execution_started"
    assert types[-1] == "execution_completed"
    assert sorted(e["data"]["step"] for e in events if e["type"] == "step_started") == [
        "p0",
        "p1",
        "p2",
    ]
    assert types.count("step_completed") == 3


CONDITIONAL_CONTEXT = (
    "{{ remember('kind', 'bug') }}{{ remember('score', 7) }}"
    "{{ remember('tags', ['ui', 'crash']) }}{{ remember('meta', {'depth': 1}) }}classified"
)

# (step id, guard, whether the step runs) against the context written by CONDITIONAL_CONTEXT.
GUARDS: list[tuple[str, dict[str, Any], bool]] = [
    ("equals", {"path": "kind", "op": "equals", "value": "bug"}, True),
    ("equals-no", {"path": "kind", "op": "equals", "value": "feature"}, False),
    ("not-equals", {"path": "kind", "op": "not_equals", "value": "feature"}, True),
    ("contains-list", {"path": "tags", "op": "contains", "value": "crash"}, True),
    ("contains-text", {"path": "kind", "op": "contains", "value": "u"}, True),
    ("contains-no", {"path": "tags", "op": "contains", "value": "perf"}, False),
    ("not-contains", {"path": "tags", "op": "not_contains", "value": "perf"}, True),
    ("gt", {"path": "score", "op": "gt", "value": 5}, True),
    ("gt-no", {"path": "score", "op": "gt", "value": 7}, False),
    ("gte", {"path": "score", "op": "gte", "value": 7}, True),
    ("lt-no", {"path": "score", "op": "lt", "value": 3}, False),
    ("lte-nested", {"path": "meta.depth", "op": "lte", "value": 1}, True),
    ("exists", {"path": "meta.depth", "op": "exists"}, True),
    ("exists-no", {"path": "missing", "op": "exists"}, False),
    ("not-exists", {"path": "missing", "op": "not_exists"}, True),
    ("matches", {"path": "kind", "op": "matches", "value": "^b.g$"}, True),
    ("matches-no", {"path": "kind", "op": "matches", "value": "^feat"}, False),
    (
        "all-no",
        {
            "all": [
                {"path": "kind", "op": "equals", "value": "bug"},
                {"path": "score", "op": "gt", "value": 100},
            ]
        },
        False,
    ),
    (
        "any",
        {
            "any": [
                {"path": "kind", "op": "equals", "value": "feature"},
                {
                    "all": [
                        {"path": "score", "op": "gte", "value": 5},
                        {"path": "tags.0", "op": "equals", "value": "ui"},
                    ]
                },
            ]
        },
        True,
    ),
]


def test_conditional_takes_and_skips_branches(owner_client: ApiClient) -> None:
    classify = ts.template_agent(owner_client, CONDITIONAL_CONTEXT)
    act = ts.template_agent(owner_client, "ran with {{ context.kind }}")
    steps = [ts.step("classify", classify)] + [
        ts.step(key, act, when=guard) for key, guard, _ in GUARDS
    ]
    team = ts.create_team(owner_client, [classify, act], ts.workflow("conditional", steps))
    execution = ts.start(owner_client, team, "triage this")
    assert execution["status"] == "completed", execution
    assert execution["progress"] == 1.0
    by_key = ts.steps_by_key(execution)
    assert by_key["classify"]["status"] == "completed"
    for key, _, runs in GUARDS:
        step = by_key[key]
        if runs:
            assert step["status"] == "completed", step
            assert step["output"] == "ran with bug"
        else:
            assert step["status"] == "skipped", step
            assert step["started_at"] is None
            assert step["output"] is None
            assert step["finished_at"] is not None
    last_run = [key for key, _, runs in GUARDS if runs][-1]
    assert execution["result"] == by_key[last_run]["output"]

    events = ts.events_of(owner_client, execution["id"], limit=1000)
    assert_ordered_events(events)
    skipped = [e["data"]["step"] for e in events if e["type"] == "step_skipped"]
    assert skipped == [key for key, _, runs in GUARDS if not runs]
    started = [e["data"]["step"] for e in events if e["type"] == "step_started"]
    assert started == ["classify"] + [key for key, _, runs in GUARDS if runs]


# -- reading executions -----------------------------------------------------------------------


def test_list_executions_with_filters(owner_client: ApiClient, viewer_client: ApiClient) -> None:
    good = ts.template_agent(owner_client, "ok {{ input }}")
    bad = ts.template_agent(owner_client, "{{ undefined_name }}")
    good_team = ts.create_team(owner_client, [good])
    bad_team = ts.create_team(owner_client, [bad])
    done = [ts.run_to_end(owner_client, good_team, f"p{n}") for n in range(3)]
    failed = ts.run_to_end(owner_client, bad_team)
    assert [e["status"] for e in done] == ["completed"] * 3
    assert failed["status"] == "failed"

    def listing(**params: Any) -> dict[str, Any]:
        return expect(owner_client.get(EXECUTIONS, params=params), 200)

    by_team = listing(team_id=good_team["id"])
    assert by_team["total"] == 3
    assert {e["id"] for e in by_team["items"]} == {e["id"] for e in done}
    summary = listing(team_id=bad_team["id"])["items"][0]
    assert summary["id"] == failed["id"]
    assert summary["team_id"] == bad_team["id"]
    assert summary["status"] == "failed"
    assert summary["status_reason"] == "failed"
    assert summary["finished_at"] is not None

    assert listing(team_id=bad_team["id"], status="failed")["total"] == 1
    assert listing(team_id=good_team["id"], status="failed")["total"] == 0
    assert listing(team_id=good_team["id"], status="completed")["total"] == 3
    failed_anywhere = listing(status="failed", limit=200)["items"]
    assert failed["id"] in {e["id"] for e in failed_anywhere}
    assert {e["status"] for e in failed_anywhere} == {"failed"}
    assert not {e["id"] for e in done} & {e["id"] for e in failed_anywhere}

    page = listing(team_id=good_team["id"], limit=2, offset=0)
    rest = listing(team_id=good_team["id"], limit=2, offset=2)
    assert (len(page["items"]), len(rest["items"])) == (2, 1)
    assert page["total"] == rest["total"] == 3
    assert {e["id"] for e in page["items"] + rest["items"]} == {e["id"] for e in done}

    assert_problem(owner_client.get(EXECUTIONS, params={"status": "exploded"}), 422)
    assert_problem(owner_client.get(EXECUTIONS, params={"team_id": "not-a-uuid"}), 422)
    # The account's viewer reads them too.
    seen = expect(viewer_client.get(EXECUTIONS, params={"team_id": good_team["id"]}), 200)
    assert seen["total"] == 3


def test_list_executions_by_cursor(
    owner_client: ApiClient, other_owner_client: ApiClient, admin_client: ApiClient
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    done = [ts.run_to_end(owner_client, team, f"p{n}") for n in range(5)]

    def listing(client: ApiClient = owner_client, **params: Any) -> dict[str, Any]:
        return expect(client.get(EXECUTIONS, params={"team_id": team["id"], **params}), 200)

    pages = [listing(limit=2)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(listing(limit=2, cursor=pages[-1]["next_cursor"]))
    assert [(len(p["items"]), p["offset"], p["total"]) for p in pages] == [
        (2, 0, 5),
        (2, 2, 5),
        (1, 4, 5),
    ]
    by_cursor = [e["id"] for p in pages for e in p["items"]]
    assert by_cursor == [e["id"] for e in listing(limit=200)["items"]]
    assert set(by_cursor) == {e["id"] for e in done}
    by_offset = [e["id"] for offset in (0, 2, 4) for e in listing(limit=2, offset=offset)["items"]]
    assert by_offset == by_cursor

    # A page read again is the same page: a conditional read answers 304.
    cursor = pages[0]["next_cursor"]
    first = owner_client.get(EXECUTIONS, params={"team_id": team["id"], "cursor": cursor})
    again = owner_client.get(
        EXECUTIONS,
        params={"team_id": team["id"], "cursor": cursor},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert again.status_code == 304

    def refused(client: ApiClient, **params: Any) -> None:
        response = client.get(EXECUTIONS, params={"team_id": team["id"], **params})
        assert pointers(assert_problem(response, 422)) == {"/query/cursor"}
        assert response.json()["errors"][0]["type"] == "invalid_cursor"

    # A cursor belongs to one account's list: another account (or a platform admin) sending
    # it gets a 422 and nothing of the list, and an edited one is no cursor at all.
    refused(other_owner_client, cursor=cursor)
    refused(admin_client, cursor=cursor)
    refused(owner_client, cursor=cursor[:9] + ("A" if cursor[9] != "A" else "B") + cursor[10:])
    refused(owner_client, cursor=cursor, offset=2)
    assert_problem(owner_client.get(EXECUTIONS, params={"cursor": "not a cursor"}), 422)


def test_events_after_and_limit(owner_client: ApiClient) -> None:
    a = ts.template_agent(owner_client, "{{ input }}{{ remember('k', 1) }}")
    team = ts.create_team(owner_client, [a, ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)
    events = ts.events_of(owner_client, execution["id"])
    assert len(events) >= 6
    assert ts.events_of(owner_client, execution["id"], after=3) == events[3:]
    assert ts.events_of(owner_client, execution["id"], after=2, limit=2) == events[2:4]
    assert ts.events_of(owner_client, execution["id"], after=len(events)) == []
    assert_problem(owner_client.get(f"{EXECUTIONS}/{execution['id']}/events?after=-1"), 422)


def test_server_sent_events_and_resume(owner_client: ApiClient) -> None:
    a = ts.template_agent(owner_client, "{{ input }}{{ remember('k', input) }}")
    team = ts.create_team(owner_client, [a, ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)
    events = ts.events_of(owner_client, execution["id"])

    response, frames = ts.read_sse(owner_client, execution["id"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [f.id for f in frames] == [str(e["seq"]) for e in events]
    assert [f.event for f in frames] == [e["type"] for e in events]
    assert [f.data for f in frames] == events
    assert frames[-1].event == "execution_completed"

    _, resumed = ts.read_sse(owner_client, execution["id"], headers={"Last-Event-ID": "3"})
    assert [f.id for f in resumed] == [str(e["seq"]) for e in events[3:]]
    _, after = ts.read_sse(owner_client, execution["id"], after=len(events) - 2)
    assert [f.data for f in after] == events[-2:]


WATCHERS = 8


def test_server_sent_events_stream_live(owner_client: ApiClient, fake_openai: FakeOpenAI) -> None:
    """Several clients watch one execution live: each gets the events up to the model call
    while the model's answer is still held back (so they were sent as they happened, not all
    at the end), then every later event, in order, and its stream ends with the terminal
    event once the execution is over."""
    slow = ts.model_agent(owner_client, fake_openai.base_url)
    echo = ts.echo_agent(owner_client)
    flow = ts.workflow(
        "sequential", [ts.step("slow", slow), ts.step("then", echo), ts.step("last", echo)]
    )
    team = ts.create_team(owner_client, [slow, echo], flow)
    answer = threading.Event()
    fake_openai.script(Held(answer, Reply("late")))
    execution = ts.start(owner_client, team, "live", wait=None)
    assert execution["status"] in {"pending", "running"}

    streams: list[list[ts.SseFrame]] = [[] for _ in range(WATCHERS)]
    ended: list[int] = []

    def watch(index: int) -> None:
        with owner_client.stream(
            "GET",
            f"{EXECUTIONS}/{execution['id']}/events",
            headers={"Accept": "text/event-stream"},
            timeout=30.0,
        ) as response:
            assert response.status_code == 200
            for frame in ts.parse_sse(response.iter_lines()):
                streams[index].append(frame)
        ended.append(index)

    def seen(index: int) -> list[str | None]:
        return [frame.event for frame in list(streams[index])]

    watchers = [threading.Thread(target=watch, args=(n,)) for n in range(WATCHERS)]
    for watcher in watchers:
        watcher.start()
    # Every watcher has the slow step's start while its model call waits for the answer ...
    ts.wait_until(
        lambda: all("step_started" in seen(n) for n in range(WATCHERS)),
        timeout=30,
        what="every watcher to see the slow step start",
    )
    assert fake_openai.in_flight == 1
    for index in range(WATCHERS):
        assert seen(index) == ["execution_started", "step_started"], seen(index)
    assert ended == [], "a stream ended while the execution was running"
    # ... and, once the model answers, every later event and the end of its stream.
    answer.set()
    for watcher in watchers:
        watcher.join(40)
    assert sorted(ended) == list(range(WATCHERS)), "a stream failed or never ended"

    events = ts.events_of(owner_client, execution["id"])
    assert events[-1]["type"] == "execution_completed"
    for frames in streams:
        assert [f.event for f in frames] == [e["type"] for e in events]
        assert [f.id for f in frames] == [str(e["seq"]) for e in events]
    finished = ts.get_execution(owner_client, execution["id"])
    assert finished["status"] == "completed"
    assert finished["steps"][0]["output"] == "late"


def test_get_with_wait_blocks_until_the_end(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    slow = ts.model_agent(owner_client, fake_openai.base_url)
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client), slow])
    fake_openai.script(Slow(0.5, Reply("done")))
    execution = ts.start(owner_client, team, wait=None)
    assert execution["status"] in {"pending", "running"}
    assert execution["finished_at"] is None
    finished = ts.get_execution(owner_client, execution["id"], wait=10)
    assert_finished_cleanly(finished)
    assert finished["result"] == "done"
    assert_problem(owner_client.get(f"{EXECUTIONS}/{execution['id']}?wait=-1"), 422)


def test_reads_of_another_account_are_404(
    owner_client: ApiClient, other_owner_client: ApiClient
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)
    base = f"{EXECUTIONS}/{execution['id']}"
    for suffix in ("", "/steps", "/context", "/events"):
        assert_problem(other_owner_client.get(base + suffix), 404)
    response = other_owner_client.get(f"{base}/events", headers={"Accept": "text/event-stream"})
    assert response.status_code == 404
    listed = expect(other_owner_client.get(EXECUTIONS, params={"limit": 200}), 200)["items"]
    assert execution["id"] not in {e["id"] for e in listed}
    listed = other_owner_client.get(EXECUTIONS, params={"team_id": team["id"]}).json()
    assert listed["total"] == 0
    assert_problem(owner_client.get(f"{EXECUTIONS}/00000000-0000-4000-8000-000000000000"), 404)


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"prompt": ""}, "/body/prompt"),
        ({}, "/body/prompt"),
        ({"prompt": "x", "budget": {"max_tokens": 0}}, "/body/budget/max_tokens"),
        ({"prompt": "x", "budget": {"max_seconds": -1}}, "/body/budget/max_seconds"),
        ({"prompt": "x", "budget": {"max_cost_usd": "-0.5"}}, "/body/budget/max_cost_usd"),
        ({"prompt": "x", "budget": {"max_turns": 3}}, "/body/budget/max_turns"),
        ({"prompt": "x", "variables": []}, "/body/variables"),
        ({"prompt": "x", "priority": "high"}, "/body/priority"),
    ],
)
def test_invalid_execution_requests(
    owner_client: ApiClient, body: dict[str, Any], pointer: str
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    response = owner_client.post(f"{ts.TEAMS}/{team['id']}/executions", json=body)
    assert pointer in pointers(assert_problem(response, 422))
    assert expect(owner_client.get(EXECUTIONS, params={"team_id": team["id"]}), 200)["total"] == 0


def test_a_team_without_agents_cannot_run(owner_client: ApiClient) -> None:
    team = expect(owner_client.post(ts.TEAMS, json={"name": ts.unique("empty")}), 201)
    response = owner_client.post(f"{ts.TEAMS}/{team['id']}/executions", json={"prompt": "x"})
    assert_problem(response, 409)
    missing = owner_client.post(
        f"{ts.TEAMS}/00000000-0000-4000-8000-000000000000/executions", json={"prompt": "x"}
    )
    assert_problem(missing, 404)


# -- shared context under concurrency --------------------------------------------------------


def test_ten_parallel_writers_lose_no_update(owner_client: ApiClient) -> None:
    writers = [
        ts.template_agent(owner_client, f"{{{{ remember('shared', 'w{n}:' ~ input) }}}}w{n}")
        for n in range(10)
    ]
    flow = ts.workflow("parallel", [ts.step(f"w{n}", a) for n, a in enumerate(writers)])
    team = ts.create_team(owner_client, writers, flow)
    execution = ts.start(owner_client, team, "go", wait=20)
    assert_finished_cleanly(execution)
    assert execution["result"]["failed"] == []
    assert execution["result"]["outputs"] == {f"w{n}": f"w{n}" for n in range(10)}

    context = ts.context_of(owner_client, execution["id"])
    history = [h for h in context["history"] if h["key"] == "shared"]
    assert [h["version"] for h in history] == list(range(1, 11))
    # Every step's write is there exactly once, recorded with its own step and agent.
    assert sorted(h["step_key"] for h in history) == sorted(f"w{n}" for n in range(10))
    agent_of = {f"w{n}": a["id"] for n, a in enumerate(writers)}
    for write in history:
        assert write["agent_id"] == agent_of[write["step_key"]]
        assert write["value"] == f"{write['step_key']}:go"
    assert context["current"]["shared"] == history[-1]["value"]

    events = ts.events_of(owner_client, execution["id"], limit=1000)
    assert_ordered_events(events)
    updates = [e["data"] for e in events if e["type"] == "context_updated"]
    assert sorted(u["version"] for u in updates) == list(range(1, 11))
    assert sorted(u["step"] for u in updates) == sorted(f"w{n}" for n in range(10))


# -- failures ---------------------------------------------------------------------------------


def test_a_failing_template_fails_the_step_and_the_execution(owner_client: ApiClient) -> None:
    ok = ts.template_agent(owner_client, "fine")
    broken = ts.template_agent(owner_client, "{{ no_such_name }}")
    flow = ts.workflow(
        "sequential", [ts.step("first", ok), ts.step("breaks", broken), ts.step("never", ok)]
    )
    team = ts.create_team(owner_client, [ok, broken], flow)
    execution = ts.start(owner_client, team)
    assert execution["status"] == "failed", execution
    assert execution["status_reason"] == "failed"
    assert "breaks" in execution["error"]
    assert execution["progress"] == 1.0
    assert execution["finished_at"] is not None
    steps = ts.steps_by_key(execution)
    assert steps["first"]["status"] == "completed"
    assert steps["breaks"]["status"] == "failed"
    assert "no_such_name" in steps["breaks"]["error"]
    assert steps["never"]["status"] == "cancelled"
    assert steps["never"]["started_at"] is None

    events = ts.events_of(owner_client, execution["id"])
    assert_ordered_events(events)
    assert ts.event_types(events)[-2:] == ["step_failed", "execution_failed"]
    assert events[-2]["data"]["step"] == "breaks"
    assert "no_such_name" in str(events[-2]["data"]["error"])
    assert "never" not in [e["data"].get("step") for e in events if e["type"] == "step_started"]


def test_an_input_template_failing_at_run_time(owner_client: ApiClient) -> None:
    echo = ts.echo_agent(owner_client)
    flow = ts.workflow(
        "pipeline",
        [ts.step("first", echo), ts.step("second", echo, input_template="{{ variables.absent }}")],
    )
    team = ts.create_team(owner_client, [echo], flow)
    execution = ts.start(owner_client, team)
    assert execution["status"] == "failed", execution
    steps = ts.steps_by_key(execution)
    assert steps["first"]["status"] == "completed"
    assert steps["second"]["status"] == "failed"
    assert "absent" in steps["second"]["error"]
    assert "second" in execution["error"]


@pytest.fixture
def parallel_with_a_failure(owner_client: ApiClient) -> Any:
    def make(policy: str) -> dict[str, Any]:
        ok = ts.template_agent(owner_client, "ok:{{ input }}")
        broken = ts.template_agent(owner_client, "{{ missing_value }}")
        flow = ts.workflow(
            "parallel",
            [ts.step("left", ok), ts.step("bad", broken), ts.step("right", ok)],
            failure_policy=policy,
        )
        return ts.create_team(owner_client, [ok, broken], flow)

    return make


def test_parallel_continue_reports_the_failure(
    owner_client: ApiClient, parallel_with_a_failure: Any
) -> None:
    execution = ts.start(owner_client, parallel_with_a_failure("continue"), "x")
    assert execution["status"] == "completed", execution
    assert execution["result"] == {
        "outputs": {"left": "ok:x", "bad": None, "right": "ok:x"},
        "failed": ["bad"],
    }
    steps = ts.steps_by_key(execution)
    assert steps["bad"]["status"] == "failed"
    assert "missing_value" in steps["bad"]["error"]
    assert steps["left"]["status"] == steps["right"]["status"] == "completed"


def test_parallel_fail_fast_fails_the_execution(
    owner_client: ApiClient, parallel_with_a_failure: Any
) -> None:
    execution = ts.start(owner_client, parallel_with_a_failure("fail_fast"), "x")
    assert execution["status"] == "failed", execution
    assert "bad" in execution["error"]
    assert ts.steps_by_key(execution)["bad"]["status"] == "failed"
    assert ts.event_types(ts.events_of(owner_client, execution["id"]))[-1] == "execution_failed"


def test_parallel_continue_with_every_step_failing(owner_client: ApiClient) -> None:
    broken = ts.template_agent(owner_client, "{{ missing_value }}")
    flow = ts.workflow(
        "parallel", [ts.step("a", broken), ts.step("b", broken)], failure_policy="continue"
    )
    team = ts.create_team(owner_client, [broken], flow)
    execution = ts.start(owner_client, team)
    assert execution["status"] == "failed", execution
    assert execution["error"]
    # The result keeps the parallel shape, whatever the outcome.
    assert execution["result"] == {"outputs": {"a": None, "b": None}, "failed": ["a", "b"]}


# -- model agents against the fake OpenAI server ---------------------------------------------


def test_model_agents_end_to_end(owner_client: ApiClient, fake_openai: FakeOpenAI) -> None:
    writer = ts.template_agent(owner_client, "{{ remember('topic', input) }}noted")
    model = ts.model_agent(
        owner_client,
        fake_openai.base_url,
        system_prompt="You are terse.",
        parameters={"temperature": 0.2, "max_tokens": 50},
    )
    flow = ts.workflow("sequential", [ts.step("note", writer), ts.step("ask", model)])
    team = ts.create_team(owner_client, [writer, model], flow)
    fake_openai.script(Reply("an answer", input_tokens=12, output_tokens=3))
    execution = ts.start(owner_client, team, "tell me")
    assert_finished_cleanly(execution)
    assert execution["result"] == "an answer"
    asked = ts.steps_by_key(execution)["ask"]
    assert (asked["input_tokens"], asked["output_tokens"]) == (12, 3)
    assert (execution["input_tokens"], execution["output_tokens"]) == (12, 3)
    # gpt-4o-mini: 0.15 and 0.60 USD per million tokens in and out.
    assert execution["cost_usd"] == asked["cost_usd"] == "0.0000036"

    [request] = fake_openai.completions
    assert request.path == "/v1/chat/completions"
    body = request.json
    assert body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 50
    roles = [m["role"] for m in body["messages"]]
    assert roles[0] == "system"
    assert body["messages"][0]["content"] == "You are terse."
    assert body["messages"][-1] == {"role": "user", "content": "tell me"}
    assert any("topic" in m["content"] for m in body["messages"] if m["role"] == "system")
    assert "authorization" not in request.headers  # no user key, no platform key configured

    events = ts.events_of(owner_client, execution["id"])
    [cost] = [e["data"] for e in events if e["type"] == "cost_updated"]
    assert cost["step"] == "ask"
    assert (cost["step_input_tokens"], cost["step_output_tokens"]) == (12, 3)
    assert (cost["total_input_tokens"], cost["total_output_tokens"]) == (12, 3)


def test_rate_limit_with_retry_after_then_success(
    owner_client: ApiClient, fake_openai: FakeOpenAI, backend: Backend
) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url)
    team = ts.create_team(owner_client, [agent])
    # An odd Retry-After, so this test's retry is told apart in the shared server's log.
    retry_after = 0.37
    fake_openai.script(Fail(429, retry_after=retry_after), Reply("after the wait"))
    execution = ts.start(owner_client, team)
    assert_finished_cleanly(execution)
    assert execution["result"] == "after the wait"
    assert len(fake_openai.completions) == 2
    # The server paused for what Retry-After asked (not its own backoff) before the retry.
    # That the pause is slept before the next attempt is the provider's unit tests' business.
    if not backend.launched:
        return  # a deployment's log is not the harness's to read
    retries = ts.wait_until(
        lambda: [
            event
            for event in log_events(backend)
            if event.get("event") == "provider.retry" and event.get("delay_s") == retry_after
        ],
        what="the retry in the server's log",
    )
    assert [(r["status"], r["kind"], r["attempt"]) for r in retries] == [(429, "rate_limit", 1)]


def test_a_timed_out_call_is_retried(owner_client: ApiClient, fake_openai: FakeOpenAI) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url, timeout_seconds=0.5)
    team = ts.create_team(owner_client, [agent])
    never = threading.Event()  # the first answer is never released: only the timeout ends it
    fake_openai.script(Held(never), Reply("second try"))
    execution = ts.start(owner_client, team)
    assert_finished_cleanly(execution)
    assert execution["result"] == "second try"
    assert len(fake_openai.completions) == 2
    # The first call was given up by the server (its timeout), not answered.
    [abandoned] = ts.wait_until(lambda: fake_openai.abandoned, what="the timed-out call")
    assert abandoned is fake_openai.completions[0]


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        pytest.param(
            Fail(200, body="<html><body>Gateway login</body></html>", content_type="text/html"),
            "not JSON",
            id="html-page",
        ),
        pytest.param(Fail(401), "auth", id="unauthorized"),
        # The status only: a provider's body text never reaches the tenant (it goes to the log).
        pytest.param(Fail(400, body={"error": {"message": "bad model"}}), "(HTTP 400)", id="400"),
        pytest.param(Fail(200, body={"choices": []}), "no choices", id="no-choices"),
    ],
)
def test_a_bad_provider_answer_fails_the_step_clearly(
    owner_client: ApiClient, fake_openai: FakeOpenAI, failure: Fail, expected: str
) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url)
    team = ts.create_team(owner_client, [agent])
    fake_openai.script(failure)
    execution = ts.start(owner_client, team)
    assert execution["status"] == "failed", execution
    [step] = execution["steps"]
    assert step["status"] == "failed"
    assert expected in step["error"], step["error"]
    assert step["step_key"] in execution["error"]
    assert len(fake_openai.completions) == 1, "a non-retryable failure was retried"
    failed = [e for e in ts.events_of(owner_client, execution["id"]) if e["type"] == "step_failed"]
    assert failed
    assert failed[0]["data"]["step"] == step["step_key"]


def test_server_errors_are_retried_until_attempts_run_out(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url)
    team = ts.create_team(owner_client, [agent])
    fake_openai.script(Fail(503), Fail(502), Fail(500), Reply("not reached"))
    execution = ts.start(owner_client, team)
    assert execution["status"] == "failed", execution
    assert "unavailable" in execution["steps"][0]["error"]
    assert len(fake_openai.completions) == 3  # FAST_RETRY: three attempts


def test_parallel_max_concurrency_is_honoured(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    agent = ts.model_agent(owner_client, fake_openai.base_url)
    flow = ts.workflow("parallel", [ts.step(f"s{n}", agent) for n in range(4)], max_concurrency=2)
    team = ts.create_team(owner_client, [agent], flow)
    first_wave = threading.Event()
    fake_openai.script(Held(first_wave), Held(first_wave), Reply("third"), Reply("fourth"))
    started = ts.start(owner_client, team, "wave", wait=None)
    # The first two calls run together and hold both slots: the other two steps wait.
    ts.wait_until(lambda: fake_openai.in_flight == 2, what="the first two calls together")
    waiting = ts.get_execution(owner_client, started["id"])
    assert sorted(s["status"] for s in waiting["steps"]) == [
        "pending",
        "pending",
        "running",
        "running",
    ], waiting["steps"]
    assert len(fake_openai.completions) == 2, "a third call started before a slot was free"
    first_wave.set()
    execution = ts.get_execution(owner_client, started["id"], wait=10)
    assert_finished_cleanly(execution)
    assert len(fake_openai.completions) == 4
    assert fake_openai.peak_in_flight == 2

    # What the API reports agrees: never more than two steps running at once.
    spans = [(ts.when(s["started_at"]), ts.when(s["finished_at"])) for s in execution["steps"]]
    for start_at, _ in spans:
        overlapping = sum(1 for s, f in spans if s <= start_at < f)
        assert overlapping <= 2, f"{overlapping} steps report running at {start_at}: {spans}"


def test_parallel_fail_fast_does_not_wait_for_slow_steps(
    owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    slow = ts.model_agent(owner_client, fake_openai.base_url)
    broken = ts.template_agent(owner_client, "{{ missing_value }}")
    flow = ts.workflow(
        "parallel", [ts.step("slow", slow), ts.step("bad", broken)], failure_policy="fail_fast"
    )
    team = ts.create_team(owner_client, [slow, broken], flow)
    never = threading.Event()  # the slow step's answer is never released
    fake_openai.script(Held(never, Reply("too late")))
    execution = ts.start(owner_client, team)
    # It ended without the slow step's answer: fail_fast did not wait for it ...
    assert execution["status"] == "failed", execution
    steps = ts.steps_by_key(execution)
    assert steps["bad"]["status"] == "failed"
    assert steps["slow"]["status"] == "cancelled", steps["slow"]
    # ... and gave the call up (the server dropped it, no answer is left pending).
    ts.wait_until(lambda: len(fake_openai.abandoned) == 1, what="the slow call given up")
