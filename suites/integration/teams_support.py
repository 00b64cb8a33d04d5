"""Helpers shared by the agent-teams integration tests: agents, teams, executions, events.

Everything goes through the public HTTP API. Fixtures live here too (not in conftest.py);
a test module binds the ones it uses by assignment (``fresh_account = teams_support.fresh_account``)
so pytest finds them and linters see no unused import.

The module has a distinctive name because test directories without ``__init__.py`` share one
import namespace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from qa.client import API, ApiClient
from qa.factories import (  # create_agent and unique: the suites' helpers use them from here
    DEFAULT_PASSWORD,
    Member,
    create_agent,
    create_user,
    expect,
    unique,
    unique_email,
    unique_name,
)
from qa.launcher import LaunchedBackend
from qa.polling import wait_until  # noqa: F401 - the suites' helpers import it from here

AGENTS = f"{API}/agents"
PROVIDER_KEYS = f"{API}/provider-keys"
TEAMS = f"{API}/teams"
EXECUTIONS = f"{API}/executions"
USAGE = f"{API}/usage"

TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
FAST_RETRY = {"max_attempts": 3, "initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5}


# -- accounts ---------------------------------------------------------------------------------


class Account:
    """A new account of its own, for tests that count what an account holds.

    Only the owner exists at first; ``member`` and ``viewer`` are created and logged in on
    first use (each costs a password hash or two on the server).
    """

    def __init__(self, admin: ApiClient) -> None:
        self.base_url = str(admin.base_url)
        email = unique_email("owner")
        body = {"name": unique_name(), "owner_email": email, "owner_password": DEFAULT_PASSWORD}
        self.id: str = expect(admin.post(f"{API}/accounts", json=body), 201)["id"]
        self.owner = ApiClient(self.base_url).login(email, DEFAULT_PASSWORD)
        self.owner_id: str = expect(self.owner.get(f"{API}/users/me"), 200)["id"]
        self._people: dict[str, tuple[Member, ApiClient]] = {}

    def person(self, role: str) -> tuple[Member, ApiClient]:
        if role not in self._people:
            made = create_user(self.owner, role)
            self._people[role] = (made, ApiClient(self.base_url).login(made.email, made.password))
        return self._people[role]

    @property
    def member(self) -> ApiClient:
        return self.person("member")[1]

    @property
    def member_id(self) -> str:
        return self.person("member")[0].id

    @property
    def viewer(self) -> ApiClient:
        return self.person("viewer")[1]

    def close(self) -> None:
        self.owner.close()
        for _, opened in self._people.values():
            opened.close()


def open_account(admin: ApiClient) -> Account:
    return Account(admin)


@pytest.fixture
def fresh_account(admin_client: ApiClient) -> Iterator[Account]:
    """A new account of the shared backend, for tests that count what an account holds."""
    account = open_account(admin_client)
    yield account
    account.close()


LIMITS = {
    "RENUM_EXECUTIONS__MAX_CONCURRENT_PER_ACCOUNT": "1",
    "RENUM_EXECUTIONS__RUNNER_CONCURRENCY": "1",
}


@dataclass
class PrivateServer:
    """A backend launched with its own settings, and its admin's client."""

    backend: LaunchedBackend
    admin: ApiClient

    def account(self) -> Account:
        return open_account(self.admin)


@pytest.fixture(scope="module")
def limited_server(request: pytest.FixtureRequest, db_flavour: str) -> Iterator[PrivateServer]:
    """One server per module and flavour with ``LIMITS``: one running execution per account
    and one execution driven at a time per process. Tests open their own accounts on it."""
    if request.config.getoption("--target"):
        pytest.skip("needs a private server with its own settings; --target cannot launch one")
    server = LaunchedBackend.start(db_flavour, extra_env=LIMITS)
    admin = ApiClient(server.base_url)
    try:
        admin.login(server.admin_email, server.admin_password)
        yield PrivateServer(server, admin)
    finally:
        admin.close()
        server.stop()


# -- agents, keys, teams ----------------------------------------------------------------------


def echo_agent(client: ApiClient, **fields: Any) -> dict[str, Any]:
    return create_agent(client, model="echo", **fields)


def template_agent(client: ApiClient, template: str, **fields: Any) -> dict[str, Any]:
    parameters = {"template": template, **fields.pop("parameters", {})}
    return create_agent(client, model="template", parameters=parameters, **fields)


def model_agent(
    client: ApiClient, base_url: str, *, model: str = "gpt-4o-mini", **fields: Any
) -> dict[str, Any]:
    """An ``openai`` agent talking to ``base_url`` (the fake server), retrying fast."""
    fields.setdefault("retry", FAST_RETRY)
    fields.setdefault("timeout_seconds", 10)
    return create_agent(client, provider="openai", model=model, base_url=base_url, **fields)


def create_key(client: ApiClient, secret: str, **fields: Any) -> dict[str, Any]:
    body = {"name": unique("key"), "key": secret, **fields}
    return expect(client.post(PROVIDER_KEYS, json=body), 201)


def new_secret() -> str:
    return f"sk-test-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


def step(step_id: str, agent: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "agent_id": agent["id"], **fields}


def workflow(strategy: str, steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"strategy": strategy, "steps": steps, **fields}


def create_team(
    client: ApiClient,
    agents: list[dict[str, Any]],
    flow: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A team whose members are ``agents`` (each once, in order) running ``flow``."""
    member_ids = list(dict.fromkeys(a["id"] for a in agents))
    body: dict[str, Any] = {"name": unique("team"), "agent_ids": member_ids, **fields}
    if flow is not None:
        body["workflow"] = flow
    return expect(client.post(TEAMS, json=body), 201)


# -- executions -------------------------------------------------------------------------------


def start(
    client: ApiClient,
    team: dict[str, Any],
    prompt: str = "hello",
    *,
    wait: float | None = 10.0,
    **body: Any,
) -> dict[str, Any]:
    """Start an execution (202); with ``wait`` the answer is its state when it ended."""
    params = {} if wait is None else {"wait": wait}
    response = client.post(
        f"{TEAMS}/{team['id']}/executions", params=params, json={"prompt": prompt, **body}
    )
    return expect(response, 202)


def run_to_end(client: ApiClient, team: dict[str, Any], prompt: str = "hello", **body: Any):
    """Start an execution and insist it has ended when the answer comes."""
    execution = start(client, team, prompt, **body)
    assert execution["status"] in TERMINAL, execution
    return execution


def get_execution(client: ApiClient, execution_id: str, wait: float = 0) -> dict[str, Any]:
    params = {"wait": wait} if wait else {}
    return expect(client.get(f"{EXECUTIONS}/{execution_id}", params=params), 200)


def steps_by_key(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step_key"]: s for s in execution["steps"]}


def events_of(client: ApiClient, execution_id: str, **params: Any) -> list[dict[str, Any]]:
    return expect(client.get(f"{EXECUTIONS}/{execution_id}/events", params=params), 200)


def event_types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def context_of(client: ApiClient, execution_id: str) -> dict[str, Any]:
    return expect(client.get(f"{EXECUTIONS}/{execution_id}/context"), 200)


def when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- Server-Sent Events -----------------------------------------------------------------------


@dataclass(frozen=True)
class SseFrame:
    id: str | None
    event: str | None
    data: Any


def parse_sse(lines: Iterator[str]) -> Iterator[SseFrame]:
    """Frames of an event stream; comments and the ``retry:`` field are dropped."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line == "":
            if "data" in fields or "event" in fields:
                data = "\n".join(fields.get("data", []))
                yield SseFrame(
                    (fields.get("id") or [None])[-1],
                    (fields.get("event") or [None])[-1],
                    json.loads(data) if data else None,
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


def read_sse(
    client: ApiClient, execution_id: str, *, headers: dict[str, str] | None = None, **params: Any
) -> tuple[httpx.Response, list[SseFrame]]:
    """Read an execution's event stream to its end (the server closes it after the last event)."""
    with client.stream(
        "GET",
        f"{EXECUTIONS}/{execution_id}/events",
        params=params,
        headers={"Accept": "text/event-stream", **(headers or {})},
        timeout=20.0,
    ) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        frames = list(parse_sse(response.iter_lines()))
    return response, frames
