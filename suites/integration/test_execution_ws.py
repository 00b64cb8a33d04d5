"""The execution WebSocket: authentication by first message, live events, the cancel command,
and refusals (bad token, another account's execution, unknown commands)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import teams_support as ts
import websockets

from qa.client import ApiClient
from qa.fake_openai import FakeOpenAI, Hang
from qa.launcher import Backend

# Both databases: live events and cancels of the engine, on each database.
pytestmark = pytest.mark.both_databases


def _url(backend: Backend, execution_id: str, after: int = 0) -> str:
    base = backend.base_url.replace("http://", "ws://", 1)
    return f"{base}/api/v1/executions/{execution_id}/ws?after={after}"


def _token(client: ApiClient) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


async def _session(
    url: str, token: str, commands: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Authenticate, send ``commands``, read until the server closes; messages and close code."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(20), websockets.connect(url) as socket:
        await socket.send(json.dumps({"type": "auth", "token": token}))
        for command in commands or []:
            await socket.send(json.dumps(command))
        try:
            async for raw in socket:
                received.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        return received, socket.close_code


def test_socket_streams_every_event_then_ends(backend: Backend, owner_client: ApiClient) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client), ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)
    received, code = asyncio.run(_session(_url(backend, execution["id"]), _token(owner_client)))
    events = [m["event"] for m in received if m["type"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == ts.event_types(
        ts.events_of(owner_client, execution["id"])
    )
    assert received[-1] == {"type": "end"}
    assert code == 1000

    resumed, _ = asyncio.run(
        _session(_url(backend, execution["id"], after=2), _token(owner_client))
    )
    assert next(m["event"]["seq"] for m in resumed if m["type"] == "event") == 3


def test_socket_cancels_a_running_execution(
    backend: Backend, owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Hang(8))
    team = ts.create_team(owner_client, [ts.model_agent(owner_client, fake_openai.base_url)])
    execution = ts.start(owner_client, team, wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the model call")
    received, _ = asyncio.run(
        _session(
            _url(backend, execution["id"]),
            _token(owner_client),
            [{"type": "launch"}, {"type": "cancel", "mode": "sideways"}, {"type": "cancel"}],
        )
    )
    kinds = [m["type"] for m in received]
    assert kinds.count("error") == 2, received
    assert {"type": "cancel_accepted", "mode": "immediate"} in received
    assert received[-1] == {"type": "end"}
    last_event = [m["event"] for m in received if m["type"] == "event"][-1]
    assert last_event["type"] == "execution_cancelled"
    assert ts.get_execution(owner_client, execution["id"])["status"] == "cancelled"


@pytest.mark.parametrize(
    "first_message", [{"type": "auth", "token": "not-a-token"}, {"type": "hello"}, ["auth"]]
)
def test_socket_refuses_a_bad_first_message(
    backend: Backend, owner_client: ApiClient, first_message: object
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)

    async def attempt() -> int | None:
        async with asyncio.timeout(10), websockets.connect(_url(backend, execution["id"])) as ws:
            await ws.send(json.dumps(first_message))
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert asyncio.run(attempt()) == 4401


def test_socket_hides_another_accounts_execution(
    backend: Backend, owner_client: ApiClient, other_owner_client: ApiClient
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    execution = ts.run_to_end(owner_client, team)
    received, code = asyncio.run(
        _session(_url(backend, execution["id"]), _token(other_owner_client))
    )
    assert received == []
    assert code == 4404
