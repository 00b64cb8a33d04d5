"""Rules only the server can judge, documented on the 422 response of each operation that
applies them.

The JSON Schema of a request says what it must look like: lengths, patterns, ranges, formats.
A few rules need the server: references to other objects (a provider key, the team's agents),
instants relative to now, one input compared with another, the stored object a change applies
to, deployment settings, and instants Python cannot convert to UTC. Each operation lists its
rules in its 422 response, in words for readers and as ``x-server-rules`` for tools: the JSON
pointer of the input (a rule covers everything below it too) and the ``type`` of the problem's
``errors`` entries. The contract tests accept a 422 to schema-valid input only when every error
it lists matches a rule of that operation (or an input limit the request really broke), so any
other disagreement between the schema and the server still fails them.

Every operation that takes input can answer 422 (the input limits of ``app.api.input_guard``
hold for every parameter and body), so one documented without a 422 gets one here; likewise
every operation that takes a JSON body can answer 400 (a body that is not JSON at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from app.api import cursors
from app.core.errors import PROBLEM_MEDIA_TYPE
from app.core.schema_additions import add_to_schema

EXTENSION = "x-server-rules"
DATETIME_OUT_OF_RANGE = "datetime_out_of_range"


@dataclass(frozen=True)
class ServerRule:
    """A rule the server applies beyond the schema: schema-valid input it refuses with 422."""

    pointer: str  # the input it is about, e.g. "/body/expires_at"; covers what is below it
    type: str  # the `type` of the errors it produces
    description: str

    def document(self) -> dict[str, str]:
        return {"pointer": self.pointer, "type": self.type, "description": self.description}


def _agent_rules() -> tuple[ServerRule, ...]:
    return (
        ServerRule(
            "/body/provider_key_id",
            "not_found",
            "A provider key must be one of the caller's account.",
        ),
        ServerRule(
            "/body/provider_key_id",
            "required",
            "An agent whose base URL is not the platform's needs its own provider key.",
        ),
        ServerRule(
            "/body/base_url",
            "egress_refused",
            "A base URL must pass the operator's egress policy (publicly routable host on an "
            "allowed port, or an allowed destination).",
        ),
        *(
            ServerRule(
                f"/body/{field}",
                "invalid",
                "Which fields an agent takes depends on its provider (on a change, the stored "
                "agent's): builtin agents take no provider key or base URL, their model is a "
                "builtin kind (`echo`, `template`, `wait`), a `template` agent needs a "
                "template that parses and a `wait` agent its `seconds` (at most its "
                "`timeout_seconds`); only builtin template agents take a template, only "
                "builtin wait agents take seconds.",
            )
            for field in ("provider_key_id", "base_url", "model", "parameters")
        ),
    )


def _workflow_rules() -> tuple[ServerRule, ...]:
    why = (
        "A workflow's steps run member agents of the team under unique ids, send output only "
        "to steps of the workflow, and have templates that parse; `max_concurrency` is for "
        "parallel workflows and `when` for conditional ones; ordering conditions compare "
        "numbers or strings and `matches` takes a regular expression."
    )
    return tuple(
        ServerRule("/body/workflow", error_type, why)
        for error_type in ("unknown_agent", "unknown_step", "missing", "invalid")
    )


# By operationId. A rule of an operation the app does not serve is ignored.
# Lists paged by cursor (``CursorPagingDep``): a cursor the list did not make is refused.
CURSOR_RULES = (ServerRule("/query/cursor", cursors.ERROR_TYPE, cursors.RULE),)

RULES: dict[str, tuple[ServerRule, ...]] = {
    "create_user": (
        ServerRule(
            "/body/account_id",
            "missing",
            "Platform admins must name the account a new user joins (owners add users to "
            "their own account).",
        ),
    ),
    "change_my_password": (
        ServerRule(
            "/body/current_password",
            "wrong_password",
            "The current password must be the caller's.",
        ),
        ServerRule(
            "/body/new_password",
            "unchanged_password",
            "The new password must differ from the current one.",
        ),
    ),
    "create_api_key": (
        ServerRule("/body/expires_at", "past_datetime", "An expiry must lie in the future."),
    ),
    "create_agent": _agent_rules(),
    "update_agent": _agent_rules(),
    "create_team": (
        ServerRule(
            "/body/agent_ids",
            "unknown_agent",
            "Members must be agents of the caller's account.",
        ),
        ServerRule(
            "/body/agent_ids",
            "invalid",
            "A team has at most the operator's number of members (`RENUM_TEAMS__MAX_MEMBERS`).",
        ),
        *_workflow_rules(),
    ),
    "update_team": _workflow_rules(),
    "get_usage": (ServerRule("/query/to", "invalid", "`to` must not come before `from`."),),
    "get_summary": (ServerRule("/query/to", "invalid", "`to` must not come before `from`."),),
    "get_timeseries": (
        ServerRule("/query/to", "invalid", "`to` must not come before `from`."),
        ServerRule(
            "/query/group_by",
            "invalid",
            "Usage figures group by team, agent, user, provider, model or paid_by; execution "
            "figures by team, strategy or status.",
        ),
        ServerRule(
            "/query/grain",
            "invalid",
            "A series holds at most `RENUM_ANALYTICS__MAX_POINTS` buckets (2000 by default): "
            "a longer period asks for days.",
        ),
    ),
    "list_audit_entries": CURSOR_RULES,
    "list_executions": CURSOR_RULES,
    "list_webhook_deliveries": CURSOR_RULES,
    "create_silence": (
        ServerRule(
            "/body/duration_minutes",
            "silence_too_long",
            "A silence lasts at most `RENUM_MONITOR__ALERTS__SILENCE_MAX_HOURS` (a deployment "
            "setting, a week by default).",
        ),
        ServerRule(
            "/body/matchers",
            "not_a_label",
            "A matcher names `rule` or a label: an alert's severity, state, fingerprint, "
            "message and value are not labels.",
        ),
    ),
}


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema.get("components", {}).get("schemas", {}).get(name, {})
    return node


def _is_date_time(schema: dict[str, Any], node: Any) -> bool:
    node = _resolve(schema, node)
    if not isinstance(node, dict):
        return False
    if node.get("format") == "date-time":
        return True
    return any(_is_date_time(schema, item) for item in node.get("anyOf", ()))


def _date_time_inputs(schema: dict[str, Any], operation: dict[str, Any]) -> Iterator[str]:
    """Pointers of the operation's date-time inputs: parameters and top-level body fields."""
    for parameter in operation.get("parameters", ()):
        if _is_date_time(schema, parameter.get("schema")):
            yield f"/{parameter['in']}/{parameter['name']}"
    for media in operation.get("requestBody", {}).get("content", {}).values():
        body = _resolve(schema, media.get("schema"))
        properties = body.get("properties") if isinstance(body, dict) else None
        for name, field in (properties or {}).items():
            if _is_date_time(schema, field):
                yield f"/body/{name}"


def rules_of(schema: dict[str, Any], operation: dict[str, Any]) -> list[ServerRule]:
    """The rules of one operation of ``schema``: declared ones, and the range of instants for
    each date-time input (one that cannot be converted to UTC, e.g. 9999-12-31T23:59:59-05:00)."""
    rules = list(RULES.get(operation.get("operationId", ""), ()))
    for pointer in dict.fromkeys(_date_time_inputs(schema, operation)):
        rules.append(
            ServerRule(
                pointer,
                DATETIME_OUT_OF_RANGE,
                "An instant must lie between 0001-01-01 and 9999-12-31 once converted to UTC.",
            )
        )
    return rules


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


_INVALID = "The request failed validation; `errors` lists each bad field."
_MALFORMED = "Malformed request (for example, a body that is not valid JSON)."


def document(schema: dict[str, Any]) -> None:
    """Add every operation's rules to its 422 response (and a 422 where input is taken and
    none is documented, a 400 where a JSON body is taken and none is documented)."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                responses.setdefault("400", _problem_response(_MALFORMED))
            if operation.get("parameters") or operation.get("requestBody"):
                responses.setdefault("422", _problem_response(_INVALID))
            response = responses.get("422")
            if response is None:
                continue
            rules = rules_of(schema, operation)
            if not rules:
                continue
            lines = "\n".join(f"- `{r.pointer}` (`{r.type}`): {r.description}" for r in rules)
            response["description"] = (
                f"{response.get('description', '')}\n\nBeyond the schema, the server refuses "
                f"(rules only it can judge):\n\n{lines}"
            )
            response[EXTENSION] = [rule.document() for rule in rules]


def install(app: FastAPI) -> None:
    """Document the rules in the schema ``app`` serves."""
    add_to_schema(app, document)
