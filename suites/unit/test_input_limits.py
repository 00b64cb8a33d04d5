"""The input limits (NUL characters, unpaired surrogates, non-finite numbers, nesting depth,
instants out of range): the walker and strict parser of ``app.core.input_limits``, the
request guard of ``app.api.input_guard`` on a small in-process app, the shared ``DateTime``
type, what an agent's outcome may carry (``app.services.engine.storable``), and the 422 rules
``app.api.server_rules`` documents."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Form, Query
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.api import server_rules
from app.api.input_guard import CheckInputs, input_problems
from app.core.errors import PROBLEM_MEDIA_TYPE, install_error_handlers
from app.core.input_limits import (
    NON_FINITE,
    NUL,
    NUMBER_TOO_LONG,
    SURROGATE,
    TOO_DEEP,
    InputProblem,
    UnsafeInput,
    find_problems,
    parse_error_problem,
    strict_loads,
    text_problem,
)
from app.schemas.common import DateTime, problems
from app.services.engine.agent_calls import AgentOutcome
from app.services.engine.storable import UnstorableOutput
from app.services.messages import OutgoingMessage


def nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` objects inside each other: {"a": {"a": ... leaf}}."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


# The walker -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("plain", None), ("é and 日本", None), ("a\x00b", NUL), ("\ud800", SURROGATE), ("", None)],
)
def test_text_problem(text: str, expected: str | None) -> None:
    found = text_problem(text)
    assert (found[0] if found else None) == expected


def test_clean_values_have_no_problems() -> None:
    value = {"a": [1, 2.5, True, None, "x", {"b": []}], "é": -0.0, "big": 10**40}
    assert find_problems(value, "/body") == []


@pytest.mark.parametrize(
    ("value", "pointer", "kind"),
    [
        ({"a": "x\x00"}, "/body/a", NUL),
        ({"a\x00": 1}, "/body/a\x00", NUL),
        ({"a": ["ok", "\ud83d"]}, "/body/a/1", SURROGATE),
        ({"n": float("nan")}, "/body/n", NON_FINITE),
        ({"n": [float("inf")]}, "/body/n/0", NON_FINITE),
        ({"n": float("-inf")}, "/body/n", NON_FINITE),
        ({"a/b": {"c~d": "\x00"}}, "/body/a~1b/c~0d", NUL),
        (("x", "\x00"), "/body/1", NUL),
    ],
)
def test_each_problem_is_found_with_its_pointer(value: Any, pointer: str, kind: str) -> None:
    assert [(p.pointer, p.type) for p in find_problems(value, "/body")] == [(pointer, kind)]


def test_problems_come_in_document_order_up_to_the_limit() -> None:
    value = {"a": "\x00", "b": [float("nan"), "\x00"], "c": {"d": "\ud800"}}
    found = find_problems(value, "")
    assert [p.pointer for p in found] == ["/a", "/b/0", "/b/1", "/c/d"]
    assert len(find_problems(["\x00"] * 100, "")) == 20
    assert len(find_problems(["\x00"] * 100, "", limit=3)) == 3


def test_depth_counts_containers_from_the_root() -> None:
    assert find_problems(nested(64), "/body", max_depth=64) == []
    too_deep = find_problems(nested(65), "/body", max_depth=64)
    assert [p.type for p in too_deep] == [TOO_DEEP]
    assert too_deep[0].pointer == "/body" + "/a" * 64
    assert find_problems([[[]]], max_depth=3) == []
    assert find_problems([[[[]]]], max_depth=3)[0].pointer == "/0/0/0"
    # Scalars at the limit are fine; only a container past it counts.
    assert find_problems(nested(3, "leaf"), max_depth=3) == []


def test_the_walk_is_not_recursive() -> None:
    # Far deeper than Python's recursion limit: the walker reports it instead of crashing.
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert [p.type for p in find_problems(deep, max_depth=64)] == [TOO_DEEP]


# Strict parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"a": NaN}', NON_FINITE),
        ('{"a": Infinity}', NON_FINITE),
        ('{"a": -Infinity}', NON_FINITE),
        ('{"a": 1e999}', NON_FINITE),
        ('{"a": "\\u0000"}', NUL),
        ('{"\\u0000": 1}', NUL),
        ('["\\udc00"]', SURROGATE),
        ("[" * 100 + "]" * 100, TOO_DEEP),
        ("[" * 5000 + "]" * 5000, TOO_DEEP),
        ("1" * 5000, NUMBER_TOO_LONG),
    ],
)
def test_strict_loads_refuses_what_breaks_a_limit(text: str, kind: str) -> None:
    with pytest.raises(UnsafeInput) as refused:
        strict_loads(text)
    assert refused.value.problems[0].type == kind


def test_strict_loads_reads_json() -> None:
    assert strict_loads(b'{"a": [1, 2.5, "\\u00e9", "\\ud83d\\ude00"]}') == {
        "a": [1, 2.5, "é", "😀"]
    }
    assert strict_loads("[" * 10 + "]" * 10, max_depth=10) is not None
    with pytest.raises(json.JSONDecodeError):
        strict_loads("{not json")
    with pytest.raises(UnicodeDecodeError):
        strict_loads(b'"\xff"')


def test_parse_error_problem_names_only_the_limits() -> None:
    assert parse_error_problem(RecursionError(), "/body") == InputProblem(
        "/body", TOO_DEEP, "nested too deeply to parse"
    )
    assert parse_error_problem(ValueError("other"), "/body") is None
    assert parse_error_problem(KeyError("x"), "/body") is None


def test_unsafe_input_says_where() -> None:
    error = UnsafeInput([InputProblem("/a", NUL, "contains a NUL character")])
    assert str(error) == "/a: contains a NUL character"
    assert str(UnsafeInput([InputProblem("", TOO_DEEP, "too deep")])) == "/: too deep"


# The request guard, in process -------------------------------------------------------------------


class Thing(BaseModel):
    name: str
    data: Any = None


def guarded_app(depth: int = 8) -> tuple[FastAPI, list[Any]]:
    """A small app as create_app wires it: the guard on every route, the error handlers."""
    app = FastAPI(dependencies=[CheckInputs])
    app.state.settings = type("S", (), {"max_json_depth": depth})()
    install_error_handlers(app)
    stored: list[Any] = []

    @app.post("/things", status_code=201)
    async def create(thing: Thing, tag: Annotated[str, Query()] = "") -> dict[str, str]:
        stored.append(thing)
        return {"name": thing.name}

    @app.post("/login")
    async def login(username: Annotated[str, Form()]) -> dict[str, str]:
        stored.append(username)
        return {"username": username}

    @app.get("/things/{name}")
    async def read(name: str) -> dict[str, str]:
        return {"name": name}

    return app, stored


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[httpx.AsyncClient, list[Any]]]:
    app, stored = guarded_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client, stored


def problem_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    return response.json()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "pointer", "kind"),
    [
        ('{"name": "a\\u0000"}', "/body/name", NUL),
        ('{"name": "a", "data": {"k\\u0000": 1}}', "/body/data/k\u0000", NUL),
        ('{"name": "a", "data": [NaN]}', "/body/data/0", NON_FINITE),
        ('{"name": "a", "data": Infinity}', "/body/data", NON_FINITE),
        ('{"name": "a", "data": -1e999}', "/body/data", NON_FINITE),
        ('{"name": "a", "data": "\\ud800"}', "/body/data", SURROGATE),
        (json.dumps({"name": "a", "data": nested(8)}), "/body/data" + "/a" * 7, TOO_DEEP),
        ("[" * 3000 + "]" * 3000, "/body", TOO_DEEP),
        ('{"name": "a", "data": ' + "9" * 5000 + "}", "/body", NUMBER_TOO_LONG),
    ],
)
async def test_a_body_breaking_a_limit_is_a_422_and_nothing_runs(
    guarded: tuple[httpx.AsyncClient, list[Any]], body: str, pointer: str, kind: str
) -> None:
    client, stored = guarded
    response = await client.post(
        "/things", content=body, headers={"Content-Type": "application/json"}
    )
    errors = problem_of(response)["errors"]
    assert [(e["pointer"], e["type"], e["location"]) for e in errors] == [(pointer, kind, "body")]
    assert stored == []


@pytest.mark.anyio
async def test_every_bad_place_is_listed(guarded: tuple[httpx.AsyncClient, list[Any]]) -> None:
    client, _ = guarded
    body = '{"name": "\\u0000", "data": [NaN, {"x": "\\u0000"}]}'
    response = await client.post(
        "/things?tag=%00", content=body, headers={"Content-Type": "application/json"}
    )
    problem = problem_of(response)
    pointers = [e["pointer"] for e in problem["errors"]]
    assert pointers == ["/query/tag", "/body/name", "/body/data/0", "/body/data/1/x"]
    assert problem["detail"].startswith("4 values cannot be accepted")


@pytest.mark.anyio
async def test_form_fields_query_and_path_parameters_are_checked(
    guarded: tuple[httpx.AsyncClient, list[Any]],
) -> None:
    client, stored = guarded
    form = problem_of(await client.post("/login", data={"username": "a\x00"}))
    assert [(e["pointer"], e["type"]) for e in form["errors"]] == [("/body/username", NUL)]
    query = problem_of(await client.post("/things?tag=%00", json={"name": "a"}))
    assert [e["pointer"] for e in query["errors"]] == ["/query/tag"]
    # A parameter the operation does not take is never read: not refused either.
    assert (await client.get("/things/x?other%00=%00")).status_code == 200
    path = problem_of(await client.get("/things/a%00b"))
    assert [(e["pointer"], e["location"]) for e in path["errors"]] == [("/path/name", "path")]
    assert stored == []


@pytest.mark.anyio
async def test_clean_requests_pass(guarded: tuple[httpx.AsyncClient, list[Any]]) -> None:
    client, stored = guarded
    body = {"name": "é", "data": {"n": [1, 2.5, None, True], "deep": nested(6)}}
    response = await client.post("/things?tag=x", json=body)
    assert response.status_code == 201
    assert (await client.post("/login", data={"username": "ada"})).status_code == 200
    assert (await client.get("/things/x")).json() == {"name": "x"}
    assert len(stored) == 2


def test_without_settings_the_default_depth_applies() -> None:
    app = FastAPI()
    scope = {"type": "http", "app": app, "query_string": b"", "path_params": {}, "headers": []}
    from starlette.requests import Request

    request = Request(scope)
    request._json = nested(65)  # as Starlette caches a parsed body
    assert [p.type for p in input_problems(request)] == [TOO_DEEP]
    request._json = nested(64)
    assert input_problems(request) == []


# Instants -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-01:00"]
)
def test_instants_out_of_range_in_utc_are_refused(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TypeAdapter(DateTime).validate_python(value)
    assert refused.value.errors()[0]["type"] == "datetime_out_of_range"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2030-01-01T12:00:00", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01T12:00:00+02:00", datetime(2030, 1, 1, 10, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("0001-01-01T00:00:00-01:00", datetime(1, 1, 1, 1, tzinfo=UTC)),
    ],
)
def test_instants_are_handed_on_in_utc(value: str, expected: datetime) -> None:
    parsed = TypeAdapter(DateTime).validate_python(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


# What an agent may store -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"output": "a\x00b"}, "/output"),
        ({"output": "\ud800"}, "/output"),
        ({"output": "ok", "context_writes": {"\udc00": 1}}, "/context/\\udc00"),
        ({"output": "ok", "context_writes": {"k": float("nan")}}, "/context/k"),
        ({"output": "ok", "context_writes": {"k\x00": 1}}, "/context/k\\u0000"),
        ({"output": "ok", "context_writes": {"k": {"v": [float("inf")]}}}, "/context/k/v/0"),
        ({"output": "ok", "context_writes": {"k": nested(200)}}, "/context/k"),
        (
            {"output": "ok", "messages": [OutgoingMessage("direct", "x", {"t": "\x00"})]},
            "/messages/0/t",
        ),
    ],
)
def test_an_outcome_that_cannot_be_stored_is_a_provider_error(
    fields: dict[str, Any], where: str
) -> None:
    with pytest.raises(UnstorableOutput) as refused:
        AgentOutcome(**fields)
    assert refused.value.kind == "unstorable_output"
    assert not refused.value.retryable
    assert f"cannot be stored: {where}" in refused.value.message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"output": "x" * 1_000_001}, "output is longer than 1000000 characters"),
        (
            {"output": "ok", "context_writes": {f"k{i}": "x" * 300_000 for i in range(4)}},
            "context writes are larger than 1048576 bytes",
        ),
    ],
    ids=["output", "context"],
)
def test_an_outcome_larger_than_a_step_may_add_is_refused(
    fields: dict[str, Any], reason: str
) -> None:
    """One step wrote 7 MB of context, and every later step was handed all of it."""
    with pytest.raises(UnstorableOutput, match=reason) as refused:
        AgentOutcome(**fields)
    assert not refused.value.retryable


def test_a_storable_outcome_is_made() -> None:
    outcome = AgentOutcome(
        output="é",
        context_writes={"k": {"n": [1, 2.5, None]}, "deep": nested(100)},
        messages=[OutgoingMessage("broadcast", None, {"text": "hi"})],
    )
    assert outcome.output == "é"


# The documented rules ----------------------------------------------------------------------------


class KeyIn(BaseModel):
    expires_at: DateTime | None = None


def rules_app() -> FastAPI:
    app = FastAPI(generate_unique_id_function=lambda route: route.name)
    install_error_handlers(app)

    @app.post("/keys", responses=problems(422))
    async def create_api_key(body: KeyIn) -> None: ...

    @app.get("/usage", responses=problems(401, 422))
    async def get_usage(since: Annotated[DateTime | None, Query(alias="from")] = None) -> None: ...

    @app.get("/live")
    async def live() -> None: ...

    @app.get("/bare")
    async def bare(q: int = 0) -> None: ...

    # As FastAPI leaves an operation that takes only a body it reads itself.
    @app.post("/raw", openapi_extra={"requestBody": {"content": {"application/json": {}}}})
    async def raw() -> None: ...

    server_rules.install(app)
    return app


def test_rules_are_documented_on_the_422_of_their_operation() -> None:
    schema = rules_app().openapi()
    keys = schema["paths"]["/keys"]["post"]["responses"]["422"]
    assert keys[server_rules.EXTENSION] == [
        {
            "pointer": "/body/expires_at",
            "type": "past_datetime",
            "description": "An expiry must lie in the future.",
        },
        {
            "pointer": "/body/expires_at",
            "type": server_rules.DATETIME_OUT_OF_RANGE,
            "description": "An instant must lie between 0001-01-01 and 9999-12-31 once "
            "converted to UTC.",
        },
    ]
    assert "`/body/expires_at` (`past_datetime`)" in keys["description"]
    raw = schema["paths"]["/raw"]["post"]["responses"]
    assert raw["422"]["content"][PROBLEM_MEDIA_TYPE]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "400" in raw
    # A JSON body can be malformed: 400, documented where the route did not say so.
    assert "400" in schema["paths"]["/keys"]["post"]["responses"]
    assert "400" not in schema["paths"]["/usage"]["get"]["responses"]
    usage = schema["paths"]["/usage"]["get"]["responses"]["422"][server_rules.EXTENSION]
    assert [(r["pointer"], r["type"]) for r in usage] == [
        ("/query/to", "invalid"),
        ("/query/from", server_rules.DATETIME_OUT_OF_RANGE),
    ]
    # Every operation that takes input can answer 422; one that takes none cannot.
    assert "422" not in schema["paths"]["/live"]["get"]["responses"]
    assert "422" in schema["paths"]["/bare"]["get"]["responses"]


def test_rules_are_documented_once() -> None:
    app = rules_app()
    first = json.dumps(app.openapi())
    assert json.dumps(app.openapi()) == first
