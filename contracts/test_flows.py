"""The flows the schema's OpenAPI links describe, walked link by link on every run.

Stateful exploration (``test_stateful.py``) follows the links at random, so a long chain such
as create an agent, make a team of it, run the team, read the execution, cancel it, delete the
team is rarely taken whole in a CI-sized run. Here each named flow is walked deterministically:
every next request is built only from the previous response's link (its ``operationId``,
parameters and request body expressions, read from the served schema), and every response
goes through all of Schemathesis's checks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from contract_support import RunState
from schemathesis.core import NOT_SET

from qa.polling import wait_until

# Both databases: the contract is the API's promise on each (see docs/harness.md).
pytestmark = pytest.mark.both_databases

TERMINAL = {"completed", "failed", "cancelled", "timed_out"}


def _pointer(document: Any, pointer: str) -> Any:
    for part in filter(None, pointer.split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


class Walk:
    """One identity walking links: the last request, its response, and the operation."""

    def __init__(self, schema: schemathesis.BaseSchema, token: str, run: RunState) -> None:
        self.schema = schema
        self.run = run
        self.headers = {"Authorization": f"Bearer {token}"}
        self.operation: Any = None
        self.request: dict[str, Any] = {}
        self.response: Any = None

    def _evaluate(self, expression: Any) -> Any:
        if isinstance(expression, dict):
            return {key: self._evaluate(value) for key, value in expression.items()}
        if isinstance(expression, list):
            return [self._evaluate(value) for value in expression]
        if not isinstance(expression, str) or not expression.startswith("$"):
            return expression
        for prefix, source in (
            ("$response.body#", self.response.json()),
            ("$request.body#", self.request.get("body")),
        ):
            if expression.startswith(prefix):
                return _pointer(source, expression[len(prefix) :])
        if expression.startswith("$request.path."):
            return self.request["path"][expression.removeprefix("$request.path.")]
        raise AssertionError(f"unsupported runtime expression {expression!r}")

    def send(self, operation: Any, expected: set[int], path: dict[str, Any], body: Any) -> Any:
        content = operation.definition.raw.get("requestBody", {}).get("content", {})
        case = operation.Case(
            path_parameters=path or None,
            body=NOT_SET if body is None else body,
            media_type=next(iter(content), None) if body is not None else None,
        )
        response = case.call_and_validate(headers=self.headers)
        if response.status_code not in expected:
            raise AssertionError(
                f"{operation.label}: expected {sorted(expected)}, got {response.status_code}: "
                f"{response.text[:500]}"
            )
        self.operation, self.response = operation, response
        self.request = {"path": path, "body": body}
        return response.json() if response.content else None

    def start(self, operation_id: str, body: Any, expected: set[int]) -> Any:
        return self.send(self.schema.find_operation_by_id(operation_id), expected, {}, body)

    def follow(self, name: str, expected: set[int], body: Any = None) -> Any:
        """Send the request the previous response's link ``name`` describes."""
        responses = self.operation.definition.raw["responses"]
        link = responses[str(self.response.status_code)]["links"][name]
        target = self.schema.find_operation_by_id(link["operationId"])
        values = {
            k.split(".")[-1]: self._evaluate(v) for k, v in link.get("parameters", {}).items()
        }
        if "requestBody" in link:
            body = {**(body or {}), **self._evaluate(link["requestBody"])}
        self.run.links[f"{self.operation.label} -> {name} (flow)"] += 1
        return self.send(target, expected, values, body)

    def snapshot(self) -> tuple[Any, dict[str, Any], Any]:
        return self.operation, self.request, self.response

    def restore(self, saved: tuple[Any, dict[str, Any], Any]) -> Any:
        self.operation, self.request, self.response = saved
        return self.response.json()


@pytest.fixture(scope="module")
def walk(
    schema_for: Callable[..., schemathesis.BaseSchema], run: RunState
) -> Callable[[str], Walk]:
    def make(identity: str) -> Walk:
        return Walk(schema_for(identity), run.tokens[identity], run)

    return make


def test_create_a_team_run_it_read_it_cancel_it_delete_it(
    walk: Callable[[str], Walk], untraced: None
) -> None:
    owner = walk("owner")
    name = f"echo-{uuid.uuid4().hex[:8]}"
    owner.start("create_agent", {"name": name, "provider": "builtin", "model": "echo"}, {201})
    owner.follow("CreateTeam", {201}, {"name": f"team-{name}"})
    owner.follow("RunTeam", {202}, {"prompt": "Summarise the report"})
    owner.follow("GetExecution", {200})
    running = owner.snapshot()
    owner.follow("CancelExecution", {202, 409}, {"mode": "immediate"})
    if owner.response.status_code == 409:  # the echo agent may already have finished
        owner.restore(running)
    wait_until(
        lambda: owner.follow("GetExecution", {200})["status"] in TERMINAL,
        timeout=30,
        what="the execution's end",
        interval=0.2,
    )
    ended = owner.snapshot()
    owner.follow("ListExecutionSteps", {200})
    owner.restore(ended)
    owner.follow("ListExecutionEvents", {200})
    owner.restore(ended)
    owner.follow("GetExecutionContext", {200})
    owner.restore(ended)
    owner.follow("DeleteTeam", {204})


def test_create_an_account_log_in_as_its_owner_refresh_log_out(
    walk: Callable[[str], Walk], untraced: None
) -> None:
    admin = walk("admin")
    suffix = uuid.uuid4().hex[:8]
    body = {
        "name": f"Flow {suffix}",
        "owner_email": f"owner-{suffix}@flows.test",
        "owner_password": "  a padded passphrase  ",
    }
    admin.start("create_account", body, {201})
    created = admin.snapshot()
    admin.follow("GetAccount", {200})
    admin.restore(created)
    admin.follow("LogInAsOwner", {200})
    admin.follow("Refresh", {200})
    admin.follow("Refresh", {200})
    admin.follow("LogOut", {204})
