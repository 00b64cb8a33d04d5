"""Hostile input to every operation the backend serves: NUL characters and unpaired surrogates
in strings and object keys, non-finite numbers (``NaN``, ``Infinity``, ``-Infinity``,
``1e999``), bodies nested far deeper than ``RENUM_MAX_JSON_DEPTH``, and instants that overflow
once converted to UTC. Each must be answered 422 (``application/problem+json``, pointing at the
value), never 5xx, and nothing may be stored.

The operations come from the schema the backend serves (``/openapi.json``), not from a list
kept here: for each operation with a request body the test builds a body from the body's
schema (every property, with the schema's examples where it has them), then sends it once per
slot and hostile value, the value put in that slot: every string, number, free-form value and
object of the body, every query, path and header parameter. A new operation is attacked as
soon as it is served.

Also: the defect that started it (an execution whose ``variables`` nest 300 levels was stored,
then could not be read back), the WebSocket's messages, and a step whose agent produces what
cannot be stored (it fails with the reason instead of the execution being abandoned).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, Tenant, create_user, expect, unique_email, unique_name
from qa.launcher import Backend

# Both databases: what may be stored (NUL characters, huge numbers, instants) is the database's.
pytestmark = pytest.mark.both_databases

PROBLEM = "application/problem+json"
GUARD_TYPES = {"nul_character", "unpaired_surrogate", "non_finite_number", "too_deep"}
OUT_OF_RANGE = "datetime_out_of_range"
# Replaced by raw JSON text (a number JSON has no word for, a nesting) after encoding.
MARK = "\ue000hostile\ue000"
DEPTH = 64  # RENUM_MAX_JSON_DEPTH's default, which the suite's backend runs with


@dataclass(frozen=True)
class Hostile:
    """One hostile value: how it goes into the body, and what the server must say."""

    name: str
    value: Any  # the value put in the slot (MARK for raw text)
    raw: str | None = None  # raw JSON text replacing MARK
    error_type: str = "nul_character"
    below: str = ""  # the error's pointer below the slot's
    whole_body: bool = False  # the error points at the body itself (too deep to parse at all)


NUL_TEXT = Hostile("NUL", "a\x00b")
SURROGATE = Hostile("unpaired surrogate", "a\ud800b", error_type="unpaired_surrogate")
NUMBERS = [
    Hostile(text, MARK, text, "non_finite_number")
    for text in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")
]
NUL_KEY = Hostile("NUL in a key", {"k\x00": 1}, below="/k\x00")
OUT_OF_RANGE_INSTANT = Hostile("9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59-05:00")


def deep_nesting(levels: int, *, whole_body: bool = False) -> Hostile:
    raw = '{"a":' * levels + "1" + "}" * levels
    return Hostile(f"{levels} levels", MARK, raw, "too_deep", whole_body=whole_body)


# The body's schema ---------------------------------------------------------------------------


@dataclass
class Slot:
    """A place in a body where a hostile value goes."""

    path: tuple[str | int, ...]
    kinds: set[str]  # "string", "number", "object", "date-time"
    depth: int  # objects and arrays around the slot (the body itself is 1)

    @property
    def pointer(self) -> str:
        parts = (str(p).replace("~", "~0").replace("/", "~1") for p in self.path)
        return "".join(f"/{part}" for part in parts)


@dataclass
class Builder:
    """Builds a body from a served schema and records its slots."""

    document: dict[str, Any]
    ids: dict[str, str]
    slots: list[Slot] = field(default_factory=list)

    def resolve(self, node: Any, refs: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in refs:
                return None, refs  # a schema inside itself (guards): stop here
            refs = (*refs, ref)
            node = self.document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return node, refs

    def build(
        self,
        node: Any,
        path: tuple[str | int, ...] = (),
        depth: int = 0,
        refs: tuple[str, ...] = (),
    ) -> Any:
        node, refs = self.resolve(node, refs)
        if node is None:
            return None
        for key in ("anyOf", "oneOf"):
            branches = [b for b in node.get(key, ()) if self.resolve(b, refs)[0] is not None]
            typed = [b for b in branches if self.resolve(b, refs)[0].get("type") != "null"]
            if typed and "properties" not in node:
                return self.build(typed[0], path, depth, refs)
        kind = node.get("type")
        name = str(path[-1]) if path else ""
        if kind == "object" or "properties" in node:
            self.slots.append(Slot(path, {"object"}, depth))
            return {
                key: self.build(child, (*path, key), depth + 1, refs)
                for key, child in node.get("properties", {}).items()
            }
        if kind == "array":
            self.slots.append(Slot(path, {"object"}, depth))
            return [self.build(node.get("items", {}), (*path, 0), depth + 1, refs)]
        if kind == "string":
            kinds = {"string", "date-time"} if node.get("format") == "date-time" else {"string"}
            self.slots.append(Slot(path, kinds, depth))
            return self.string(node, name)
        if kind in ("integer", "number"):
            self.slots.append(Slot(path, {"number"}, depth))
            return node.get("default") or node.get("minimum") or 1
        if kind == "boolean":
            return False
        # Any JSON value (variables' values, a guard's value).
        self.slots.append(Slot(path, {"string", "number", "object"}, depth))
        return "x"

    def string(self, node: dict[str, Any], name: str) -> str:
        if node.get("enum"):
            return str(node["enum"][0])
        if "const" in node:
            return str(node["const"])
        if node.get("format") == "uuid":
            return self.ids.get(name, str(uuid.uuid4()))
        if node.get("format") == "email":
            return unique_email("hostile")
        if node.get("format") == "date-time":
            return "2031-01-01T00:00:00Z"
        if node.get("format") in ("uri", "url"):
            return "https://example.com/v1"
        examples = node.get("examples") or ([node["example"]] if "example" in node else [])
        if examples and isinstance(examples[0], str):
            return examples[0]
        return "x" * max(1, int(node.get("minLength", 1)))


def variants(slot: Slot, deep: bool) -> Iterator[Hostile]:
    if "string" in slot.kinds:
        yield NUL_TEXT
        yield SURROGATE
    if "date-time" in slot.kinds:
        yield OUT_OF_RANGE_INSTANT
    if "number" in slot.kinds:
        yield from NUMBERS
    if "object" in slot.kinds:
        yield NUL_KEY
        yield deep_nesting(300)
        if deep:
            yield deep_nesting(DEPTH + 1 - slot.depth)  # one level past the limit
            yield deep_nesting(12_500, whole_body=True)  # too deep for Python's parser


def put(body: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(body) if isinstance(body, list) else dict(body)
    copy[path[0]] = put(copy[path[0]], path[1:], value)  # type: ignore[index]
    return copy


def encode(body: Any, hostile: Hostile) -> bytes:
    text = json.dumps(body)
    if hostile.raw is not None:
        text = text.replace(json.dumps(MARK), hostile.raw)
    return text.encode()


# The operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def label(self) -> str:
        return self.spec.get("operationId") or f"{self.method} {self.path}"

    def media(self) -> tuple[str, dict[str, Any]] | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        for media in ("application/json", "application/x-www-form-urlencoded"):
            if media in content:
                return media, content[media]["schema"]
        return None

    def parameters(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", ()) if p["in"] == where]


def operations(document: dict[str, Any]) -> list[Operation]:
    found = [
        Operation(method.upper(), path, spec)
        for path, item in document["paths"].items()
        for method, spec in item.items()
        if isinstance(spec, dict) and "responses" in spec
    ]
    assert len(found) > 20, "the served schema lists the API's operations"
    return found


@dataclass
class World:
    """The objects path parameters and bodies name, and a client per operation."""

    backend: Backend
    admin: ApiClient
    owner: ApiClient
    ids: dict[str, str]

    def client_for(self, operation: Operation) -> ApiClient:
        """The admin for the platform's operations (accounts, and those the schema says need
        the admin role), else the tenant's owner."""
        admin_only = operation.spec.get("x-required-role") == "admin"
        return (
            self.admin if admin_only or operation.path.startswith(f"{API}/accounts") else self.owner
        )

    def url(self, operation: Operation, overrides: dict[str, str] | None = None) -> str:
        url = operation.path
        for parameter in operation.parameters("path"):
            value = (overrides or {}).get(parameter["name"]) or self.ids.get(
                parameter["name"], str(uuid.uuid4())
            )
            url = url.replace("{" + parameter["name"] + "}", quote(value, safe=""))
        return url

    def snapshot(self) -> dict[str, Any]:
        """What is stored, as the API shows it: every collection's size, and the objects the
        operations' path parameters name."""
        seen: dict[str, Any] = {}
        for role, client, collection in (
            ("admin", self.admin, "accounts"),
            ("admin", self.admin, "users"),
            ("owner", self.owner, "users"),
            ("owner", self.owner, "api-keys"),
            ("owner", self.owner, "provider-keys"),
            ("owner", self.owner, "agents"),
            ("owner", self.owner, "teams"),
            ("owner", self.owner, "executions"),
        ):
            page = expect(client.get(f"{API}/{collection}"), 200)
            seen[f"{role} {collection}"] = page["total"]
        for name in ("agent", "team"):
            seen[name] = expect(self.owner.get(f"{API}/{name}s/{self.ids[name + '_id']}"), 200)
        team = self.ids["team_id"]
        seen["members"] = expect(self.owner.get(f"{API}/teams/{team}/members"), 200)
        seen["versions"] = expect(self.owner.get(f"{API}/teams/{team}/workflow/versions"), 200)
        seen["user"] = expect(self.owner.get(f"{API}/users/{self.ids['user_id']}"), 200)
        seen["execution"] = expect(
            self.owner.get(f"{API}/executions/{self.ids['execution_id']}"), 200
        )["status"]
        return seen


@pytest.fixture(scope="module")
def served(backend: Backend) -> dict[str, Any]:
    return expect(httpx.get(f"{backend.base_url}/openapi.json", timeout=30), 200)


def enum_path_values(document: dict[str, Any]) -> dict[str, str]:
    """Path parameters with a fixed set of values (a monitor figure's name): the first one, so
    that the parameter under attack is the only wrong one in the request."""
    found = {}
    builder = Builder(document, {})
    for operation in operations(document):
        for parameter in operation.parameters("path"):
            schema, _ = builder.resolve(parameter.get("schema", {}), ())
            if isinstance(schema, dict) and schema.get("enum"):
                found[parameter["name"]] = str(schema["enum"][0])
    return found


@pytest.fixture(scope="module")
def world(
    backend: Backend,
    admin_client: ApiClient,
    owner_client: ApiClient,
    tenant: Tenant,
    served: dict[str, Any],
) -> World:
    agent = expect(
        owner_client.post(
            f"{API}/agents",
            json={"name": unique_name("hostile-agent"), "provider": "builtin", "model": "echo"},
        ),
        201,
    )
    team = expect(
        owner_client.post(
            f"{API}/teams", json={"name": unique_name("hostile-team"), "agent_ids": [agent["id"]]}
        ),
        201,
    )
    execution = expect(
        owner_client.post(
            f"{API}/teams/{team['id']}/executions", params={"wait": 10}, json={"prompt": "hi"}
        ),
        202,
    )
    user = create_user(owner_client, "member")
    key = expect(owner_client.post(f"{API}/api-keys", json={"name": unique_name("key")}), 201)
    ids = {  # path parameters (and body fields of the same name) name these objects
        **enum_path_values(served),
        "agent_id": agent["id"],
        "team_id": team["id"],
        "execution_id": execution["id"],
        "user_id": user.id,
        "account_id": tenant.account_id,
        "key_id": key["id"],
    }
    return World(backend, admin_client, owner_client, ids)


def send_json(
    client: ApiClient, method: str, url: str, content: bytes | str, **params: Any
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return client.request(method, url, content=content, headers=headers, params=params)


def assert_refused(
    response: httpx.Response, pointer: str, error_type: str | None, exact: bool
) -> None:
    """422 problem+json with an error at ``pointer`` (of ``error_type``; the only one if
    ``exact``)."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == 422, f"{where}: {response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith(PROBLEM), where
    errors = response.json()["errors"]
    found = [(e["pointer"], e["type"]) for e in errors]
    if exact:
        assert len(errors) == 1, f"{where}: {found}"
    assert any(
        e["pointer"].startswith(pointer) and error_type in (None, e["type"]) for e in errors
    ), f"{where}: expected {error_type} at {pointer}, got {found}"


# The tests ----------------------------------------------------------------------------------


def test_every_body_slot_refuses_hostile_values(
    served: dict[str, Any], world: World, deep: bool, subtests: Any
) -> None:
    before = world.snapshot()
    attacked = []
    for operation in operations(served):
        media = operation.media()
        if media is None:
            continue
        kind, schema = media
        builder = Builder(served, world.ids)
        body = builder.build(schema)
        attacked.append(operation.label)
        client = world.client_for(operation)
        url = world.url(operation)
        form = kind != "application/json"
        for slot in builder.slots:
            for hostile in variants(slot, deep):
                if form and (not slot.path or hostile is not NUL_TEXT):
                    continue  # a form's fields are text, sent as UTF-8: NUL is what fits
                with subtests.test(msg=f"{operation.label} {slot.pointer} {hostile.name}"):
                    sent = put(body, slot.path, hostile.value)
                    if form:
                        response = client.request(operation.method, url, data=sent)
                    else:
                        response = send_json(client, operation.method, url, encode(sent, hostile))
                    pointer = "/body" + ("" if hostile.whole_body else slot.pointer + hostile.below)
                    if hostile is OUT_OF_RANGE_INSTANT:  # the type's own check, among others
                        assert_refused(response, pointer, OUT_OF_RANGE, exact=False)
                    else:
                        assert_refused(response, pointer, hostile.error_type, exact=True)
    assert {"create_execution", "create_team", "create_agent", "login"} <= set(attacked)
    assert world.snapshot() == before


def test_every_parameter_refuses_hostile_values(
    served: dict[str, Any], world: World, subtests: Any
) -> None:
    before = world.snapshot()
    for operation in operations(served):
        client = world.client_for(operation)
        for parameter in operation.spec.get("parameters", ()):
            name, where = parameter["name"], parameter["in"]
            schema, _ = Builder(served, {}).resolve(parameter.get("schema", {}), ())
            branches = [schema, *schema.get("anyOf", ())]
            types = {b.get("type") for b in branches} | {b.get("format") for b in branches}
            values = [] if where == "header" else [NUL_TEXT.value]
            if types & {"number", "integer"}:
                values += [h.raw for h in NUMBERS]
            if "date-time" in types:
                values.append(OUT_OF_RANGE_INSTANT.value)
            for value in values:
                with subtests.test(msg=f"{operation.label} {where} {name}={value!r}"):
                    if where == "path":
                        url, params, headers = world.url(operation, {name: value}), {}, {}
                    else:
                        url = world.url(operation)
                        params = {name: value} if where == "query" else {}
                        headers = {name: value} if where == "header" else {}
                    response = client.request(operation.method, url, params=params, headers=headers)
                    assert response.status_code < 500
                    assert_refused(response, f"/{where}/{name}", None, exact=False)
    assert world.snapshot() == before


def test_operations_that_take_input_document_the_422(served: dict[str, Any]) -> None:
    """Every operation with parameters or a body says it can answer 422 (`If-None-Match`, a
    conditional read's, is compared, never refused)."""
    for operation in operations(served):
        parameters = operation.spec.get("parameters", ())
        inputs = [p for p in parameters if p.get("name") != "If-None-Match"]
        if inputs or operation.spec.get("requestBody"):
            assert "422" in operation.spec["responses"], operation.label


def test_a_parameter_an_operation_does_not_take_is_never_read(world: World) -> None:
    """Only what an operation reads must be storable: others are ignored, NUL or not."""
    assert world.owner.get(f"{API}/users/me", params={"unknown": "a\x00b"}).status_code == 200
    response = world.owner.get(f"{API}/agents", params={"unknown": "a\x00b", "limit": "a\x00"})
    assert_refused(response, "/query/limit", None, exact=False)
    assert [e["pointer"] for e in response.json()["errors"]] == ["/query/limit"]


def test_deep_variables_are_refused_and_no_execution_is_made(world: World) -> None:
    """The attack that started it: `variables` nested 300 levels answered 500, the execution
    was stored anyway, and reading it back was a 500 for good."""
    owner, team = world.owner, world.ids["team_id"]
    listed = expect(owner.get(f"{API}/executions", params={"team_id": team}), 200)["total"]
    url = f"{API}/teams/{team}/executions"

    def variables_of_depth(levels: int) -> bytes:
        # The body is level 1 and `variables` level 2: the nesting inside adds the rest.
        inner = '{"a":' * (levels - 2) + "1" + "}" * (levels - 2)
        return f'{{"prompt": "hi", "variables": {{"v": {inner}}}}}'.encode()

    response = send_json(owner, "POST", url, variables_of_depth(300))
    assert_refused(response, "/body/variables/v", "too_deep", exact=True)
    assert response.json()["errors"][0]["pointer"] == "/body/variables/v" + "/a" * (DEPTH - 2)
    assert expect(owner.get(f"{API}/executions", params={"team_id": team}), 200)["total"] == listed

    # At the limit: accepted, stored, and read back.
    created = expect(send_json(owner, "POST", url, variables_of_depth(DEPTH), wait=10), 202)
    again = expect(owner.get(f"{API}/executions/{created['id']}"), 200)
    assert again["variables"] == created["variables"]
    assert again["status"] == "completed"
    one_more = send_json(owner, "POST", url, variables_of_depth(DEPTH + 1))
    assert_refused(one_more, "/body/variables/v", "too_deep", exact=True)


def test_nul_and_non_finite_values_fail_the_same_on_every_database(world: World) -> None:
    """A NUL answered 500 on PostgreSQL and was kept on SQLite; NaN was stored as null on
    SQLite. Now both refuse them before storing, and the login form too."""
    owner = world.owner
    text = '{"name": "a\\u0000", "provider": "builtin", "model": "echo"}'
    response = send_json(owner, "POST", f"{API}/agents", text)
    assert_refused(response, "/body/name", "nul_character", exact=True)
    url = f"{API}/teams/{world.ids['team_id']}/executions"
    for raw in ("NaN", "Infinity", "-Infinity", "1e999"):
        text = f'{{"prompt": "hi", "variables": {{"n": {raw}}}}}'
        response = send_json(owner, "POST", url, text)
        assert_refused(response, "/body/variables/n", "non_finite_number", exact=True)
    anonymous = world.owner.anonymous()
    form = {"username": f"a\x00{unique_email()}", "password": DEFAULT_PASSWORD}
    assert_refused(anonymous.post(f"{API}/auth/token", data=form), "/body/username", None, True)


def test_instants_out_of_range_are_refused(world: World) -> None:
    owner = world.owner
    for instant in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+00:30"):
        body = {"name": unique_name("key"), "expires_at": instant}
        response = owner.post(f"{API}/api-keys", json=body)
        assert_refused(response, "/body/expires_at", OUT_OF_RANGE, exact=True)
        for name in ("from", "to"):
            response = owner.get(f"{API}/usage", params={name: instant})
            assert_refused(response, f"/query/{name}", OUT_OF_RANGE, exact=True)
    # The latest instant there is still works.
    usage = owner.get(f"{API}/usage", params={"to": "9999-12-31T23:59:59Z"})
    assert usage.status_code == 200


# The WebSocket ------------------------------------------------------------------------------


async def _socket(backend: Backend, execution_id: str, *messages: str) -> tuple[list[Any], Any]:
    url = backend.base_url.replace("http://", "ws://", 1)
    received: list[Any] = []
    async with (
        asyncio.timeout(20),
        websockets.connect(f"{url}/api/v1/executions/{execution_id}/ws") as socket,
    ):
        for message in messages:
            await socket.send(message)
        try:
            async for raw in socket:
                received.append(json.loads(raw))
                if received[-1].get("type") == "error":
                    break
        except websockets.ConnectionClosed:
            pass
        return received, socket.close_code


@pytest.mark.parametrize(
    "first",
    [
        '{"type": "auth", "token": "%s\\u0000"}',
        '{"type": "auth", "token": "%s", "n": NaN}',
        '{"type": "auth", "token": "%s", "deep": ' + '{"a":' * 300 + "1" + "}" * 300 + "}",
    ],
    ids=["nul", "nan", "deep"],
)
def test_the_websocket_parses_its_first_message_strictly(
    backend: Backend, world: World, first: str
) -> None:
    token = str(world.owner.headers["Authorization"]).removeprefix("Bearer ")
    _, code = asyncio.run(_socket(backend, world.ids["execution_id"], first % token))
    assert code == 4401


# Agents' results ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reasons"),
    [
        ('{{ "a\\x00b" }}', ["cannot be stored: /output:"]),
        # The renderer may refuse NaN itself (not JSON data); either way the step says why.
        ("{{ remember('score', 'nan'|float) }}done", ["/context/score:", "not JSON data"]),
        ("{{ remember('k\\x00', 1) }}done", ["cannot be stored: /context/k\\u0000:"]),
    ],
    ids=["nul-output", "nan-context", "nul-key"],
)
def test_a_result_that_cannot_be_stored_fails_its_step(
    world: World, template: str, reasons: list[str]
) -> None:
    """A template agent writing NUL or NaN broke the step's transaction: the execution was
    retried until "abandoned 4 times". Now the step fails with the reason."""
    owner = world.owner
    agent = expect(
        owner.post(
            f"{API}/agents",
            json={
                "name": unique_name("unstorable"),
                "provider": "builtin",
                "model": "template",
                "parameters": {"template": template},
            },
        ),
        201,
    )
    team = expect(
        owner.post(f"{API}/teams", json={"name": unique_name("team"), "agent_ids": [agent["id"]]}),
        201,
    )
    execution = expect(
        owner.post(
            f"{API}/teams/{team['id']}/executions", params={"wait": 20}, json={"prompt": "hi"}
        ),
        202,
    )
    assert execution["status"] == "failed", execution
    assert execution["status_reason"] != "abandoned"
    (step,) = execution["steps"]
    assert step["status"] == "failed"
    assert any(reason in step["error"] for reason in reasons), step["error"]
    # Everything about it reads back.
    for part in ("", "/steps", "/context", "/events", "/messages"):
        expect(owner.get(f"{API}/executions/{execution['id']}{part}"), 200)


def test_an_input_template_rendering_what_cannot_be_stored_fails_its_step(world: World) -> None:
    """An input template rendering a NUL left the execution `running` on PostgreSQL: the
    rendered input is stored with the step, so the step now fails before it is stored."""
    owner = world.owner
    agent = expect(
        owner.post(
            f"{API}/agents",
            json={"name": unique_name("echo"), "provider": "builtin", "model": "echo"},
        ),
        201,
    )
    flow = {
        "strategy": "pipeline",
        "steps": [
            {"id": "first", "agent_id": agent["id"]},
            {"id": "second", "agent_id": agent["id"], "input_template": '{{ "a\\x00" ~ input }}'},
        ],
    }
    team = expect(
        owner.post(
            f"{API}/teams",
            json={"name": unique_name("team"), "agent_ids": [agent["id"]], "workflow": flow},
        ),
        201,
    )
    execution = expect(
        owner.post(
            f"{API}/teams/{team['id']}/executions", params={"wait": 20}, json={"prompt": "hi"}
        ),
        202,
    )
    assert execution["status"] == "failed", execution
    first, second = execution["steps"]
    assert first["status"] == "completed"
    assert second["status"] == "failed"
    assert "input template failed: its output contains a NUL character" in second["error"]
    for part in ("", "/steps", "/events"):
        expect(owner.get(f"{API}/executions/{execution['id']}{part}"), 200)
