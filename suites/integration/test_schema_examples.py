"""Every operation's example in the served OpenAPI schema succeeds as the API explorer sends it.

The API explorer at ``/docs`` (Swagger UI 5) shows each operation with an example request and
sends it as shown. Here every operation under ``/api/v1`` of ``/openapi.json`` is sent the way
Swagger UI builds it (``SwaggerRequests``), against a fresh backend per database flavour:

- the body: the media type's first ``examples`` entry (or its ``example``), else a value
  composed from the schema the way Swagger UI composes one: each part's ``examples``,
  ``default`` or ``example``, and for a part without any what Swagger UI makes up (``"string"``,
  a number's bound such as ``1``, ``{"additionalProp1": {}}`` for a free-form object); a form's
  fields one by one;
- query and header parameters: their first example, else their default (others are not sent);
- ``Accept``: the first media type of the success response.

What a reader types in themselves the test fills in: path parameters, and the body fields
that name the reader's own objects or credentials (each call lists them), with the ids of real
objects made before, in dependency order, most of them by the examples themselves. Every
answer must be 2xx, and the execution that the example starts on the example team (two model
agents, answered by the launcher's fake OpenAI-compatible server) must end ``completed``. The
run fails for an operation of the schema that the scenario does not send, unless ``EXCLUDED``
says why it cannot succeed as sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from qa.client import API, ApiClient
from qa.factories import create_agent, expect
from qa.fake_openai import FakeOpenAI, Held
from qa.launcher import LaunchedBackend
from qa.plugin import LaunchBackend
from qa.polling import wait_until
from qa.schema_diff import json_type

pytestmark = pytest.mark.both_databases  # the examples write through every resource

# Operations whose example cannot succeed as sent on a fresh backend, and why (none so far).
EXCLUDED: dict[str, str] = {}

# A backend on which every request is slow enough to be profiled, so that a profile exists to
# read (`get_profile`); the rest of its settings are the launcher's defaults.
PROFILE_EVERYTHING = {
    "RENUM_PERFORMANCE__PROFILING__THRESHOLD_MS": "0.001",
    "RENUM_PERFORMANCE__PROFILING__FLOOR_MS": "0.001",
}
FORM = "application/x-www-form-urlencoded"


# -- Swagger UI's requests ------------------------------------------------------------------


class Unshowable(AssertionError):
    """Swagger UI would make up a value the test cannot predict (a random string for a pattern,
    a format it does not mimic): the example is incomplete there."""


# What Swagger UI 5 (json-schema-2020-12-samples) writes for a string of these formats.
STRING_FORMATS: dict[str, Callable[[], str]] = {
    "uuid": lambda: "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "email": lambda: "user@example.com",
    "uri": lambda: "https://example.com/",
    "password": lambda: "********",
    "date-time": lambda: (
        datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ),
}
INFERRED_TYPES = {
    "array": ("items", "prefixItems", "contains", "minItems", "maxItems", "uniqueItems"),
    "object": ("properties", "additionalProperties", "minProperties", "maxProperties", "required"),
    "string": ("pattern", "format", "minLength", "maxLength"),
    "integer": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}


def has_example(schema: dict[str, Any]) -> bool:
    return bool(schema.get("examples")) or "default" in schema or "example" in schema


def first_example(schema: dict[str, Any]) -> Any:
    """The value Swagger UI shows for a schema: its first example, else its default, else its
    (deprecated) ``example``."""
    if schema.get("examples"):
        return schema["examples"][0]
    return schema["default"] if "default" in schema else schema.get("example")


def merge(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """Swagger UI's merge of a schema with its first ``anyOf``/``oneOf`` option (the target's
    keywords win; required and properties are merged)."""
    merged = {**source, **target}
    for key in ("anyOf", "oneOf"):
        if key in source and key not in target:
            del merged[key]
    if isinstance(source.get("required"), list) and isinstance(target.get("required"), list):
        merged["required"] = list(dict.fromkeys([*target["required"], *source["required"]]))
    if isinstance(source.get("properties"), dict) and isinstance(target.get("properties"), dict):
        names = dict.fromkeys([*source["properties"], *target["properties"]])
        merged["properties"] = {
            name: merge(target["properties"].get(name, {}), source["properties"].get(name, {}))
            for name in names
        }
    if isinstance(source.get("items"), dict) and isinstance(target.get("items"), dict):
        merged["items"] = merge(target["items"], source["items"])
    return merged


def infer_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = "array" if "array" in kind else "object" if "object" in kind else kind[0]
    if isinstance(kind, str):
        return kind
    for inferred, keywords in INFERRED_TYPES.items():
        if any(keyword in schema for keyword in keywords):
            return inferred
    if has_example(schema):
        return json_type(first_example(schema))
    return "string"


def js_number(schema: dict[str, Any]) -> float:
    """Swagger UI's number: 0 within the bounds, i.e. ``minimum || maximum || 0`` (JavaScript's
    ``||``: a bound of 0 counts as none), exclusive bounds moved by 1."""
    low = schema.get("minimum")
    high = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        moved = schema["exclusiveMinimum"] + 1
        low = moved if low is None else max(low, moved)
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        moved = schema["exclusiveMaximum"] - 1
        high = moved if high is None else min(high, moved)
    number = low or high or 0
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0 and number % step:
        number += step - number % step
    return number


def shown(value: Any) -> str:
    """A value as Swagger UI puts it in a form field or a parameter (JSON unless a string)."""
    return value if isinstance(value, str) else json.dumps(value)


class SwaggerRequests:
    """Builds an operation's request from the served schema as Swagger UI 5 does for an
    OpenAPI 3.1 document (``getDefaultRequestBodyValue``, ``sampleFromSchemaGeneric``,
    ``ParameterRow.setDefaultValue``)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: Any, seen: tuple[str, ...]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The schema behind its ``$ref``s; a reference back to one being expanded stays
        unresolved, as Swagger UI leaves a cycle (it then shows a string)."""
        while isinstance(schema, dict) and "$ref" in schema:
            reference = schema["$ref"]
            if reference in seen:
                return {}, seen
            node: Any = self.document
            for part in reference.removeprefix("#/").split("/"):
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen = (*seen, reference)
        return (schema if isinstance(schema, dict) else {}), seen

    def sample(self, schema: Any, where: str = "", seen: tuple[str, ...] = ()) -> Any:
        """The value Swagger UI shows for ``schema`` (``sampleFromSchemaGeneric``, JSON)."""
        schema, seen = self.resolve(schema, seen)
        plain = has_example(schema)
        options = schema.get("oneOf") or schema.get("anyOf")
        if not plain and options:
            option, seen = self.resolve(options[0], seen)
            schema = merge(schema, option)
            plain = has_example(schema) and has_example(option)
        kind = infer_type(schema)
        if plain:
            value = first_example(schema)
            if isinstance(value, int | float) and not isinstance(value, bool) and kind == "string":
                return str(value)
            return value
        if kind == "array":
            return self._array(schema, where, seen)
        if kind == "object":
            return self._object(schema, where, seen)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        if kind == "string":
            return self._string(schema, where)
        if kind in ("integer", "number"):
            return js_number(schema)
        return True if kind == "boolean" else None

    def _array(self, schema: dict[str, Any], where: str, seen: tuple[str, ...]) -> list[Any]:
        items: list[Any] = []
        item, item_seen = self.resolve(schema.get("items"), seen)
        options = item.get("anyOf") or item.get("oneOf")
        if options:
            rest = {k: v for k, v in item.items() if k not in ("anyOf", "oneOf")}
            items = [self.sample(merge(o, rest), f"{where}/0", item_seen) for o in options]
        elif "items" in schema:
            items = [self.sample(schema["items"], f"{where}/0", seen)]
        if isinstance(schema.get("maxItems"), int) and schema["maxItems"] > 0:
            items = items[: schema["maxItems"]]
        while items and len(items) < schema.get("minItems", 0):
            items.append(items[len(items) % len(items)])
        return items

    def _object(self, schema: dict[str, Any], where: str, seen: tuple[str, ...]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, prop in (schema.get("properties") or {}).items():
            resolved, _ = self.resolve(prop, seen)
            if resolved.get("deprecated") or resolved.get("readOnly"):
                continue
            found[name] = self.sample(prop, f"{where}/{name}", seen)
        extra = schema.get("additionalProperties")
        if extra is True:
            found["additionalProp1"] = {}
        elif isinstance(extra, dict):
            value = self.sample(extra, f"{where}/additionalProp1", seen)
            wanted = schema.get("minProperties", 0)
            count = wanted - len(found) if wanted > len(found) else 3
            for number in range(1, count + 1):
                found[f"additionalProp{number}"] = value
        return found

    def _string(self, schema: dict[str, Any], where: str) -> str:
        if "pattern" in schema:
            raise Unshowable(
                f"{where or '/'} has no example: Swagger UI shows a random string matching "
                f"{schema['pattern']!r} there"
            )
        fmt = schema.get("format")
        if fmt is not None and fmt not in STRING_FORMATS:
            raise Unshowable(f"{where or '/'} has no example: Swagger UI makes up a {fmt!r}")
        text = STRING_FORMATS[fmt]() if fmt else "string"
        if isinstance(schema.get("maxLength"), int) and schema["maxLength"] > 0:
            text = text[: schema["maxLength"]]
        position = 0
        while len(text) < schema.get("minLength", 0):
            text += text[position % len(text)]
            position += 1
        return text

    # the request
    def body(self, operation: dict[str, Any]) -> tuple[str, Any] | None:
        """The media type and the body Swagger UI sends: the media type's first example, else
        the schema's sample; a form's fields one by one (empty ones are not sent)."""
        content = (operation.get("requestBody") or {}).get("content") or {}
        if not content:
            return None
        media, spec = next(iter(content.items()))
        if media == FORM:
            return media, self.form(spec.get("schema", {}))
        if spec.get("examples"):
            return media, next(iter(spec["examples"].values())).get("value")
        if "example" in spec:
            return media, spec["example"]
        return media, self.sample(spec.get("schema", {}))

    def form(self, schema: dict[str, Any]) -> dict[str, str]:
        resolved, seen = self.resolve(schema, ())
        fields = {}
        for name, prop in (resolved.get("properties") or {}).items():
            prop, prop_seen = self.resolve(prop, seen)
            if prop.get("readOnly"):
                continue
            options = prop.get("oneOf") or prop.get("anyOf") or [{}]
            option, prop_seen = self.resolve(options[0], prop_seen)
            value = shown(self.sample(merge(prop, option), f"/{name}", prop_seen))
            if value:
                fields[name] = value
        return fields

    def parameter(self, parameter: dict[str, Any]) -> str | None:
        """The value Swagger UI fills a parameter in with: its first example, its ``example``,
        the schema's ``example`` or ``default``; None when it leaves it empty."""
        schema, seen = self.resolve(parameter.get("schema", {}), ())
        options = schema.get("oneOf") or schema.get("anyOf")
        if options:
            schema = merge(schema, self.resolve(options[0], seen)[0])
        if parameter.get("examples"):
            value = next(iter(parameter["examples"].values())).get("value")
        elif "example" in parameter:
            value = parameter["example"]
        elif "example" in schema:
            value = schema["example"]
        else:
            value = schema.get("default", parameter.get("default"))
        return None if value is None or value == "" else shown(value)

    def accept(self, operation: dict[str, Any]) -> str | None:
        """The media type Swagger UI asks for: the success response's first one."""
        codes = sorted(code for code in operation.get("responses", {}) if code.startswith("2"))
        content = operation["responses"][codes[0]].get("content") if codes else None
        return next(iter(content)) if content else None


# -- the scenario -----------------------------------------------------------------------------


def at_pointer(document: Any, pointer: str, value: Any) -> None:
    """Replace the value at a JSON pointer that exists in ``document``."""
    *parents, last = pointer.strip("/").split("/")
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    elif last in node:
        node[last] = value
    else:
        raise KeyError(pointer)


class ExampleRun:
    """Sends the operations' examples one by one and records what went wrong, so one run
    reports every operation whose example fails (and those that could not be sent since an
    example they depend on failed)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.requests = SwaggerRequests(document)
        self.operations: dict[str, tuple[str, str, dict[str, Any]]] = {
            operation["operationId"]: (method, path, operation)
            for path, item in document["paths"].items()
            if path.startswith(f"{API}/")
            for method, operation in item.items()
            if isinstance(operation, dict) and "operationId" in operation
        }
        self.sent: set[str] = set()
        self.failures: list[str] = []

    def example(self, operation_id: str) -> Any:
        """The body Swagger UI shows for an operation (to read values later steps use)."""
        found = self.requests.body(self.operations[operation_id][2])
        assert found is not None, f"{operation_id} takes no body"
        return found[1]

    def send(
        self,
        operation_id: str,
        client: httpx.Client,
        path: dict[str, Any] | None = None,
        fill: dict[str, Any] | None = None,
    ) -> Any:
        """Send the example of ``operation_id`` as ``client``, with ``path`` parameters and the
        body fields at the JSON pointers of ``fill`` (the reader's own values); the JSON answer
        when it is 2xx (``{}`` for another or no body), else None."""
        method, template, operation = self.operations[operation_id]
        self.sent.add(operation_id)
        path, fill = path or {}, fill or {}
        try:  # an example Swagger UI cannot show whole fails whatever it would be sent with
            self.requests.body(operation)
        except Unshowable as exc:
            self.failures.append(f"{operation_id}: {exc}")
            return None
        missing = sorted(name for name, value in {**path, **fill}.items() if value is None)
        if missing:
            self.failures.append(
                f"{operation_id}: not sent, it needs {', '.join(missing)} from an example that "
                "failed"
            )
            return None
        try:
            url, params, headers, body = self._request(operation, template, path, fill)
        except (Unshowable, KeyError) as exc:
            self.failures.append(f"{operation_id}: {type(exc).__name__}: {exc}")
            return None
        media, value = body if body else (None, None)
        response = client.request(
            method.upper(),
            url,
            params=params,
            headers=headers,
            data=value if media == FORM else None,
            json=value if media not in (None, FORM) else None,
        )
        if not response.is_success:
            self.failures.append(
                f"{operation_id}: {method.upper()} {url} {params or ''} answered "
                f"{response.status_code}: {response.text[:600]}\n    sent: {json.dumps(value)}"
            )
            return None
        media = response.headers.get("content-type", "").split(";")[0]
        json_answer = media == "application/json" or media.endswith("+json")  # not JSON lines
        return response.json() if json_answer and response.content else {}

    def _request(
        self,
        operation: dict[str, Any],
        template: str,
        path: dict[str, Any],
        fill: dict[str, Any],
    ) -> tuple[str, dict[str, str], dict[str, str], tuple[str, Any] | None]:
        url, params, headers = template, {}, {}
        for parameter in operation.get("parameters", []):
            name, place = parameter["name"], parameter["in"]
            value = str(path[name]) if place == "path" and name in path else None
            value = value if value is not None else self.requests.parameter(parameter)
            if place == "path":
                if value is None:
                    raise KeyError(f"no value for the path parameter {name!r}")
                url = url.replace(f"{{{name}}}", quote(value, safe=""))
            elif value is not None and place == "query":
                params[name] = value
            elif value is not None and place == "header":
                headers[name] = value
        unknown = sorted(set(path) - {p["name"] for p in operation.get("parameters", [])})
        assert not unknown, f"no such path parameters: {unknown}"
        accept = self.requests.accept(operation)
        if accept:
            headers["Accept"] = accept
        body = self.requests.body(operation)
        if body is not None and fill:
            body = (body[0], json.loads(json.dumps(body[1])))
            for pointer, value in fill.items():
                at_pointer(body[1], pointer, value)
        elif fill:
            raise KeyError(f"no body to fill {sorted(fill)} in")
        return url, params, headers, body

    def report(self) -> str:
        unsent = sorted(set(self.operations) - self.sent - set(EXCLUDED))
        lines = [*self.failures]
        lines += [f"{name}: not sent; add it to the scenario" for name in unsent]
        stale = sorted(set(EXCLUDED) - set(self.operations))
        lines += [f"{name}: excluded, but the schema has no such operation" for name in stale]
        lines += [f"{name}: excluded, but sent" for name in sorted(self.sent & set(EXCLUDED))]
        return "\n".join(lines)


def bearer(base_url: str, token: str) -> ApiClient:
    return ApiClient(base_url).use_credential(token)


@pytest.fixture
def fresh_backend(launch_backend: LaunchBackend, db_flavour: str) -> LaunchedBackend:
    return launch_backend(db_flavour, extra_env=PROFILE_EVERYTHING)


@pytest.fixture
def clients(fresh_backend: LaunchedBackend) -> Iterator[list[ApiClient]]:
    """The clients a test opens (closed after it)."""
    opened: list[ApiClient] = []
    yield opened
    for client in opened:
        client.close()


def test_every_example_succeeds_as_the_explorer_sends_it(
    fresh_backend: LaunchedBackend, clients: list[ApiClient], fake_openai: FakeOpenAI
) -> None:
    base = fresh_backend.base_url
    document = expect(httpx.get(f"{base}/openapi.json", timeout=30), 200)
    run = ExampleRun(document)

    def client(token: str | None = None) -> ApiClient:
        opened = ApiClient(base) if token is None else bearer(base, token)
        clients.append(opened)
        return opened

    anonymous = client()
    admin = client().login(fresh_backend.admin_email, fresh_backend.admin_password)

    # Accounts, and a session of the account's first owner from the login example.
    account = run.send("create_account", admin) or {}
    run.send("list_accounts", admin)
    run.send("get_account", admin, path={"account_id": account.get("id")})
    session = run.send("login", anonymous) or {}
    owner = client(session.get("access_token", "none"))
    run.send("get_me", owner)

    # Users; a second session of the owner's to rotate and end; the new user's own password.
    user = run.send("create_user", owner) or {}
    run.send("list_users", owner)
    run.send("get_user", owner, path={"user_id": user.get("id")})
    second = run.send("login", anonymous) or {}
    rotated = run.send("refresh", anonymous, fill={"/refresh_token": second.get("refresh_token")})
    rotated = rotated or {}
    run.send("logout", anonymous, fill={"/refresh_token": rotated.get("refresh_token")})
    person = run.example("create_user")
    with ApiClient(base) as themselves:
        themselves.login(person["email"], person["password"])
        run.send("change_my_password", themselves)
    run.send("update_user", owner, path={"user_id": user.get("id")})

    # Keys.
    key = run.send("create_api_key", owner) or {}
    run.send("list_api_keys", owner)
    run.send("revoke_api_key", owner, path={"key_id": key.get("id")})
    provider_key = run.send("create_provider_key", owner) or {}
    run.send("list_provider_keys", owner)
    run.send("delete_provider_key", owner, path={"key_id": provider_key.get("id")})

    # Agents; the team example's two model agents and an agent to add to it are the reader's.
    agent = run.send("create_agent", owner) or {}
    run.send("list_agents", owner)
    run.send("get_agent", owner, path={"agent_id": agent.get("id")})
    run.send("update_agent", owner, path={"agent_id": agent.get("id")})
    researcher = create_agent(owner, "researcher", provider="openai", model="gpt-4o-mini")["id"]
    writer = create_agent(owner, "writer", provider="openai", model="gpt-4o-mini")["id"]
    reviewer = create_agent(owner, "reviewer")["id"]

    # Teams and members.
    team = (
        run.send(
            "create_team",
            owner,
            fill={
                "/agent_ids/0": researcher,
                "/agent_ids/1": writer,
                "/workflow/steps/0/agent_id": researcher,
                "/workflow/steps/1/agent_id": writer,
            },
        )
        or {}
    )
    team_id = team.get("id")
    run.send("list_teams", owner)
    run.send("get_team", owner, path={"team_id": team_id})
    run.send("update_team", owner, path={"team_id": team_id})
    run.send("list_workflow_versions", owner, path={"team_id": team_id})
    run.send("list_team_members", owner, path={"team_id": team_id})
    run.send("add_team_member", owner, path={"team_id": team_id}, fill={"/agent_id": reviewer})
    run.send("remove_team_member", owner, path={"team_id": team_id, "agent_id": reviewer})

    # An execution of the example team, run to its end by the fake model server.
    execution_id = (run.send("create_execution", owner, path={"team_id": team_id}) or {}).get("id")
    ended = run.send("get_execution", owner, path={"execution_id": execution_id}) or {}
    if execution_id is not None and ended.get("status") != "completed":
        run.failures.append(f"the example's execution did not complete: {json.dumps(ended)}")
    for reading in (
        "list_executions",
        "list_execution_steps",
        "get_execution_context",
        "list_execution_messages",
        "list_execution_events",
    ):
        path = {} if reading == "list_executions" else {"execution_id": execution_id}
        run.send(reading, owner, path=path)

    # Cancel: a second execution, its first model call held by the fake server.
    release = threading.Event()
    fake_openai.script(Held(release))
    try:
        running = None
        if team_id is not None:
            running = expect(
                owner.post(
                    f"{API}/teams/{team_id}/executions",
                    json={"prompt": "Brief me.", "variables": {"topic": "tidal power"}},
                ),
                202,
            )["id"]
            wait_until(lambda: fake_openai.in_flight == 1, what="the held model call")
        cancelled = run.send("cancel_execution", owner, path={"execution_id": running}) or {}
        if running is not None and cancelled.get("status") != "cancelled":
            run.failures.append(f"the cancelled execution did not end: {json.dumps(cancelled)}")
    finally:
        release.set()
    run.send("get_usage", owner)
    run.send("get_summary", owner)
    run.send("get_timeseries", owner)
    # The audit trail of what the scenario did so far.
    run.send("list_audit_entries", owner)
    run.send("export_audit_entries", owner)

    # Webhooks (the launcher's dispatcher is off: deliveries wait, nothing is sent).
    hook_id = (run.send("create_webhook", owner) or {}).get("id")
    run.send("list_webhooks", owner)
    run.send("get_webhook", owner, path={"webhook_id": hook_id})
    run.send("update_webhook", owner, path={"webhook_id": hook_id})
    run.send("rotate_webhook_secret", owner, path={"webhook_id": hook_id})
    delivery = run.send("test_webhook", owner, path={"webhook_id": hook_id}) or {}
    run.send("list_webhook_deliveries", owner, path={"webhook_id": hook_id})
    run.send(
        "get_webhook_delivery",
        owner,
        path={"webhook_id": hook_id, "delivery_id": delivery.get("id")},
    )

    # Operations, for platform admins.
    for reading in (
        "list_dead_letters",
        "get_configuration",
        "reload_configuration",
        "get_monitor_snapshot",
        "get_monitor_history",
        "list_alerts",
        "list_silences",
        "stream_monitor",
    ):
        run.send(reading, admin)
    silence = run.send("create_silence", admin) or {}
    run.send("end_silence", admin, path={"silence_id": silence.get("id")})
    profiles = (run.send("list_profiles", admin) or {}).get("profiles") or [{}]
    run.send("get_profile", admin, path={"profile_id": profiles[0].get("id")})

    # Deletes last.
    run.send("delete_webhook", owner, path={"webhook_id": hook_id})
    run.send("delete_team", owner, path={"team_id": team_id})
    run.send("delete_agent", owner, path={"agent_id": agent.get("id")})
    run.send("delete_user", owner, path={"user_id": user.get("id")})

    report = run.report()
    if report:
        pytest.fail(f"examples that fail as the API explorer sends them:\n{report}")


# -- the composer itself ----------------------------------------------------------------------

# Bodies without an example, as FastAPI described them before issue 21, and what the vendored
# Swagger UI (5.35.0, its `getSampleSchema` run on this document) shows for each: the old
# execution example, a number between 0 and 10000 shown as its maximum (JavaScript's `||`
# skips a minimum of 0), an optional body's default.
OLD_BODIES = {
    "components": {
        "schemas": {
            "ExecutionCreate": {
                "type": "object",
                "additionalProperties": False,
                "required": ["prompt"],
                "properties": {
                    "prompt": {
                        "type": "string",
                        "minLength": 1,
                        "examples": ["Summarise the report"],
                    },
                    "variables": {"type": "object", "additionalProperties": True},
                    "budget": {"$ref": "#/components/schemas/Budget"},
                },
            },
            "Budget": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_tokens": {
                        "anyOf": [
                            {"type": "integer", "maximum": 1000000000.0, "minimum": 1.0},
                            {"type": "null"},
                        ]
                    },
                    "max_cost_usd": {
                        "anyOf": [
                            {"type": "string", "pattern": "^[0-9.]+$", "examples": ["0.50"]},
                            {"type": "null"},
                        ]
                    },
                    "max_seconds": {
                        "anyOf": [
                            {"type": "number", "maximum": 86400.0, "exclusiveMinimum": 0.0},
                            {"type": "null"},
                        ]
                    },
                },
            },
            "TeamMemberCreate": {
                "type": "object",
                "required": ["agent_id"],
                "properties": {
                    "agent_id": {"type": "string", "format": "uuid"},
                    "position": {
                        "anyOf": [
                            {"type": "integer", "maximum": 10000.0, "minimum": 0.0},
                            {"type": "null"},
                        ]
                    },
                },
            },
            "ExecutionCancel": {
                "type": "object",
                "properties": {
                    "mode": {
                        "type": "string",
                        "enum": ["immediate", "after_step"],
                        "default": "immediate",
                    }
                },
            },
        }
    }
}
SHOWN_BY_SWAGGER_UI = {
    "ExecutionCreate": {
        "prompt": "Summarise the report",
        "variables": {"additionalProp1": {}},
        "budget": {"max_tokens": 1, "max_cost_usd": "0.50", "max_seconds": 1},
    },
    "TeamMemberCreate": {"agent_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "position": 10000},
    "ExecutionCancel": {"mode": "immediate"},
}


def json_body(schema: dict[str, Any], **media: Any) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": schema, **media}}}}


@pytest.mark.parametrize("name", sorted(SHOWN_BY_SWAGGER_UI))
def test_bodies_without_an_example_are_composed_as_swagger_ui_does(name: str) -> None:
    requests = SwaggerRequests(OLD_BODIES)
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    if name == "ExecutionCancel":  # an optional body
        schema = {"anyOf": [schema, {"type": "null"}]}
    assert requests.body(json_body(schema)) == ("application/json", SHOWN_BY_SWAGGER_UI[name])


def test_a_media_type_example_is_sent_as_it_is_and_a_made_up_string_is_refused() -> None:
    requests = SwaggerRequests(OLD_BODIES)
    schema = {"$ref": "#/components/schemas/TeamMemberCreate"}
    examples = {"first": {"value": {"agent_id": "x"}}, "second": {"value": {}}}
    assert requests.body(json_body(schema, examples=examples)) == (
        "application/json",
        {"agent_id": "x"},
    )
    name = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^a+$"}}}
    with pytest.raises(Unshowable, match="/name has no example"):
        requests.body(json_body(name))
