"""A bounded shutdown: a backend with an open Server-Sent Events stream, an open WebSocket and
a running execution (its model call hangs on the fake OpenAI server) gets SIGTERM. The process
exits within the configured bound (`RENUM_SHUTDOWN_TIMEOUT_SECONDS`; before, it stayed up as
long as a stream did), the server closes both streams (the SSE response ends, the WebSocket
closes with 1001 "going away"), and the execution is released: a new process on the same
database resumes it at once, although its staleness window is an hour."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets

from qa.client import API, ApiClient
from qa.factories import expect, tenant_with_owner
from qa.fake_openai import FakeOpenAI, Hang
from qa.launcher import REPO_ROOT, LaunchedBackend
from qa.plugin import LaunchBackend
from qa.polling import wait_until

SHUTDOWN = {
    "RENUM_SHUTDOWN_TIMEOUT_SECONDS": "2",
    "RENUM_EXECUTIONS__HEARTBEAT_SECONDS": "0.5",
    # Only a released execution can be resumed before this: an hour.
    "RENUM_EXECUTIONS__STALE_AFTER_SECONDS": "3600",
    "RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS": "0.5",
}
# Generous deadlines: states are checked, never durations. A backend that waits for its
# streams never exits by itself at all.
EXIT_DEADLINE_SECONDS = 20.0
PATIENCE_SECONDS = 60.0


def chat_calls(fake: FakeOpenAI) -> list[Any]:
    """The model calls the fake received (not the health check's model listings)."""
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


@dataclass
class Stream:
    """What a stream's reader saw, filled in by its thread."""

    lines: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    ended_cleanly: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def saw_a_step_start(self) -> bool:
        events = [m["event"]["type"] for m in self.messages if m.get("type") == "event"]
        return "event: step_started" in self.lines or "step_started" in events


def read_sse(url: str, token: str, stream: Stream) -> None:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=PATIENCE_SECONDS) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                stream.lines.append(line)
        stream.ended_cleanly = True  # the server ended the response (no cut connection)
    except BaseException as exc:  # recorded for the assertion message
        stream.error = exc


def read_socket(url: str, token: str, stream: Stream) -> None:
    async def session() -> None:
        async with asyncio.timeout(PATIENCE_SECONDS), websockets.connect(url) as socket:
            await socket.send(json.dumps({"type": "auth", "token": token}))
            try:
                async for raw in socket:
                    stream.messages.append(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            stream.close_code = socket.close_code
            stream.close_reason = socket.close_reason

    try:
        asyncio.run(session())
    except BaseException as exc:
        stream.error = exc


def start(target: Callable[..., None], *args: Any) -> Stream:
    stream = Stream()
    stream.thread = threading.Thread(target=target, args=(*args, stream), daemon=True)
    stream.thread.start()
    return stream


def ownership(backend: LaunchedBackend, execution_id: str) -> tuple[str, str | None, Any]:
    """The execution's (status, owner, heartbeat) as stored, read beside the API."""
    url = backend.env["RENUM_DATABASE__URL"]
    if backend.flavour == "sqlite":
        path = url.split(":///", 1)[1]
        with sqlite3.connect(path) as conn:
            row = conn.execute(
                "SELECT status, owner, heartbeat_at FROM executions WHERE id = ?",
                (uuid.UUID(execution_id).hex,),
            ).fetchone()
        return row[0], row[1], row[2]

    async def read() -> Any:
        import asyncpg

        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            return await conn.fetchrow(
                "SELECT status, owner, heartbeat_at FROM executions WHERE id = $1",
                uuid.UUID(execution_id),
            )
        finally:
            await conn.close()

    row = asyncio.run(read())
    return row["status"], row["owner"], row["heartbeat_at"]


class ServedBackend(LaunchedBackend):
    """The launcher's backend, started with `renum serve` (as `python -m app serve`) instead
    of plain uvicorn."""

    def _spawn(self, port: int) -> None:
        assert self.log_path is not None
        command = [sys.executable, "-m", "qa.loopback_guard", "app", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )


@pytest.mark.both_databases  # a released execution is resumed by a new process on the database
def test_sigterm_closes_streams_exits_in_bounded_time_and_releases_the_execution(
    launch_backend: LaunchBackend, fake_openai: FakeOpenAI, db_flavour: str
) -> None:
    sigterm_drill(launch_backend(db_flavour, extra_env=SHUTDOWN), fake_openai)


def test_under_renum_serve_the_shutdown_is_bounded_too(
    fake_openai: FakeOpenAI, db_flavour: str
) -> None:
    """The same under `renum serve` (its own signal handling in front of uvicorn's), on one
    database: what the database does on release is the test above's."""
    backend = ServedBackend.start(db_flavour, extra_env=SHUTDOWN)
    try:
        sigterm_drill(backend, fake_openai)
    finally:
        backend.stop()


def sigterm_drill(backend: LaunchedBackend, fake_openai: FakeOpenAI) -> None:
    """SIGTERM with both streams open and the execution's model call hanging; then a new
    process on the same database resumes the execution."""
    fake_openai.script(Hang(PATIENCE_SECONDS))  # the first model call never answers in time
    tenant, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    try:
        agent = expect(
            owner.post(
                f"{API}/agents",
                json={
                    "name": "hangs-once",
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "retry": {"max_attempts": 1},
                },
            ),
            201,
        )
        team = expect(
            owner.post(f"{API}/teams", json={"name": "shutdown", "agent_ids": [agent["id"]]}),
            201,
        )
        execution = expect(
            owner.post(f"{API}/teams/{team['id']}/executions", json={"prompt": "go"}), 202
        )
        token = str(owner.tokens["access_token"])
    finally:
        owner.close()
    execution_id = execution["id"]
    wait_until(
        lambda: len(chat_calls(fake_openai)) == 1,
        PATIENCE_SECONDS,
        what="the model call is in flight",
    )
    assert ownership(backend, execution_id)[0] == "running"

    events_url = f"{backend.base_url}{API}/executions/{execution_id}/events"
    socket_url = backend.base_url.replace("http://", "ws://", 1)
    sse = start(read_sse, events_url, token)
    socket = start(read_socket, f"{socket_url}{API}/executions/{execution_id}/ws", token)
    wait_until(
        sse.saw_a_step_start, PATIENCE_SECONDS, what=f"the SSE stream is live ({sse.error!r})"
    )
    wait_until(
        socket.saw_a_step_start,
        PATIENCE_SECONDS,
        what=f"the WebSocket is live ({socket.error!r})",
    )

    assert backend.process is not None
    backend.process.send_signal(signal.SIGTERM)
    try:
        backend.process.wait(EXIT_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(
            "the backend did not exit after SIGTERM while streams were open:\n"
            + "\n".join(backend.log_text().splitlines()[-30:])
        )

    for stream in (sse, socket):
        assert stream.thread is not None
        stream.thread.join(PATIENCE_SECONDS)
        assert not stream.thread.is_alive()
    assert sse.error is None, repr(sse.error)
    assert sse.ended_cleanly
    assert any("shutting down" in line for line in sse.lines), sse.lines[-5:]
    assert socket.error is None, repr(socket.error)
    assert (socket.close_code, socket.close_reason) == (1001, "server shutting down")

    status, owner_id, heartbeat = ownership(backend, execution_id)
    assert (status, owner_id, heartbeat) == ("running", None, None)
    log = backend.log_text()
    assert '"shutdown_started"' in log
    assert '"executions_released"' in log

    # A new process on the same database: the fake now answers, and the execution resumes
    # at once (an hour before it would count as abandoned otherwise).
    backend.respawn()
    resumed = ApiClient(backend.base_url).login(tenant.owner.email, tenant.owner.password)
    try:
        url = f"{API}/executions/{execution_id}"
        wait_until(
            lambda: expect(resumed.get(url), 200)["status"] == "completed",
            PATIENCE_SECONDS,
            what="the execution is resumed and completes",
            interval=0.05,
        )
        kinds = [event["type"] for event in expect(resumed.get(f"{url}/events"), 200)]
        assert kinds.count("execution_resumed") == 1
    finally:
        resumed.close()
    assert len(chat_calls(fake_openai)) == 2  # the interrupted call, made again
