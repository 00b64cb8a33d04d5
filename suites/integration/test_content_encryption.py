"""Executions' content sealed at rest (issue 17) in the launched backend, over HTTP (on SQLite;
the unit tests seal and open on both databases). Two accounts run the same team (a template
agent that writes the context and messages the next step, then a model agent on the fake
OpenAI server) on the same prompt; the first is listed in
RENUM_SECURITY__CONTENT_ENCRYPTION__ACCOUNTS. The API answers both the same, in plaintext
(the execution, its steps, context, messages, events as JSON and as a live stream); the
database, read directly, holds none of the listed account's prompt, variables, outputs,
context or messages, and all of the other's. Restarted with the setting off, the backend
still reads the sealed execution the same; `renum keys seal-content` seals what the account
ran before it was listed, and `renum keys status` counts it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
import teams_support as ts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from qa.client import ApiClient
from qa.factories import tenant_with_owner
from qa.fake_openai import FakeOpenAI
from qa.launcher import REPO_ROOT, LaunchedBackend

# A long scenario: run by `nox -s drills`, not the default run (qa.plugin's DRILL).
pytestmark = pytest.mark.drill

SECRET = "ocelot-vanadium-5527"
SETTING = "RENUM_SECURITY__CONTENT_ENCRYPTION__ACCOUNTS"
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMES = ("created_at", "started_at", "finished_at", "expires_at")
# The template agent: writes the context, messages the next step, answers with content.
WRITER = (
    "{{ remember('notes', {'about': 'ctx ' ~ input}) }}"
    "{{ send('step-2', 'msg ' ~ input) }}out {{ input }} {{ variables.topic }}"
)
TABLES = {
    "executions": "id",
    "execution_steps": "execution_id",
    "execution_context": "execution_id",
    "execution_messages": "execution_id",
    "execution_events": "execution_id",
}


def restart(backend: LaunchedBackend, env: dict[str, str]) -> None:
    """Stop the server cleanly (its database kept) and start it again with ``env``."""
    assert backend.process is not None
    backend.process.send_signal(signal.SIGTERM)
    backend.process.wait(30)
    backend.respawn(env)


def renum(backend: LaunchedBackend, *args: str) -> subprocess.CompletedProcess[str]:
    """`renum ARGS` beside the backend, on its database and keys."""
    return subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT, env=backend.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def stored(backend: LaunchedBackend, execution_id: str) -> str:
    """Every row of the execution in the backend's database, as the database gives them."""

    async def read() -> str:
        engine = create_async_engine(backend.env["RENUM_DATABASE__URL"])
        found = []
        try:
            async with engine.connect() as conn:
                postgres = conn.dialect.name == "postgresql"
                value: Any = uuid.UUID(execution_id) if postgres else uuid.UUID(execution_id).hex
                for table, column in TABLES.items():
                    rows = await conn.execute(
                        text(f"SELECT * FROM {table} WHERE {column} = :id"),  # noqa: S608 - ours
                        {"id": value},
                    )
                    found += [repr(tuple(row)) for row in rows]
        finally:
            await engine.dispose()
        assert found
        return "\n".join(found)

    return asyncio.run(read())


def everything(client: ApiClient, execution_id: str) -> dict[str, Any]:
    """What the API returns of an execution, every read path."""
    base = f"{ts.EXECUTIONS}/{execution_id}"
    _, frames = ts.read_sse(client, execution_id)
    listed = ts.expect(client.get(ts.EXECUTIONS, params={"limit": 200}), 200)["items"]
    return {
        "execution": ts.get_execution(client, execution_id),
        "steps": ts.expect(client.get(f"{base}/steps"), 200),
        "context": ts.context_of(client, execution_id),
        "messages": ts.expect(client.get(f"{base}/messages"), 200),
        "events": ts.events_of(client, execution_id),
        "streamed": [frame.data for frame in frames],
        "summary": next(e for e in listed if e["id"] == execution_id),
    }


def comparable(read: dict[str, Any]) -> str:
    """``read`` with its ids and times left out (each account has its own)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMES}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return UUID_TEXT.sub("<id>", json.dumps(strip(read), sort_keys=True))


def test_a_listed_account_reads_the_same_and_stores_no_plaintext(fake_openai: FakeOpenAI) -> None:
    """On the embedded default, end to end; what differs on PostgreSQL (its one-statement
    writes, the markers' partial indexes) is sealed, opened and rotated by
    ``suites/unit/test_content_encryption.py`` on both databases."""
    backend = LaunchedBackend.start("sqlite")
    clients: list[ApiClient] = []

    def log_in() -> tuple[ApiClient, ApiClient]:
        """The two owners' clients on the (restarted) backend."""
        for client in clients:
            client.close()
        clients[:] = [
            ApiClient(backend.base_url).login(t.owner.email, t.owner.password) for t in tenants
        ]
        return clients[0], clients[1]

    try:
        teams, tenants = [], []
        for _ in range(2):
            tenant, owner = tenant_with_owner(
                backend.base_url, backend.admin_email, backend.admin_password
            )
            clients.append(owner)
            writer = ts.template_agent(owner, WRITER)
            model = ts.model_agent(owner, fake_openai.base_url)
            teams.append(ts.create_team(owner, [writer, model]))
            tenants.append(tenant)
        account_ids = [t.account_id for t in tenants]
        before = ts.run_to_end(clients[0], teams[0], f"early {SECRET}", variables={"topic": "x"})

        # The first account listed from now on (a restart: the setting is read at start-up).
        restart(backend, {SETTING: account_ids[0]})
        sealing, plain = log_in()
        prompt, variables = f"brief {SECRET}", {"topic": f"topic {SECRET}"}
        ran = [
            ts.run_to_end(client, team, prompt, variables=variables)
            for client, team in zip((sealing, plain), teams, strict=True)
        ]
        assert [r["status"] for r in ran] == ["completed", "completed"], ran
        sealed_id, plain_id = ran[0]["id"], ran[1]["id"]
        reads = [everything(sealing, sealed_id), everything(plain, plain_id)]
        assert comparable(reads[0]) == comparable(reads[1])
        execution = reads[0]["execution"]
        assert (execution["prompt"], execution["variables"]) == (prompt, variables)
        steps = ts.steps_by_key(execution)
        assert steps["step-1"]["output"] == f"out {prompt} topic {SECRET}"
        assert steps["step-2"]["output"] == f"echo: {prompt}"
        assert reads[0]["context"]["current"] == {"notes": {"about": f"ctx {prompt}"}}
        assert [m["body"] for m in reads[0]["messages"]] == [f"msg {prompt}"]
        assert reads[0]["events"] == reads[0]["streamed"]
        outputs = [e["data"]["output"] for e in reads[0]["events"] if e["type"] == "step_completed"]
        assert outputs == [steps["step-1"]["output"], steps["step-2"]["output"]]

        assert SECRET not in stored(backend, sealed_id)
        assert SECRET in stored(backend, plain_id)
        assert SECRET in stored(backend, before["id"])  # ran before the account was listed

        # The setting off: nothing new is sealed, and what was still reads the same.
        restart(backend, {SETTING: ""})
        sealing, plain = log_in()
        assert comparable(everything(sealing, sealed_id)) == comparable(reads[0])
        after = ts.run_to_end(sealing, teams[0], f"later {SECRET}", variables={"topic": "y"})
        assert SECRET in stored(backend, after["id"])

        # What the account ran while not listed, sealed afterwards, online.
        early = everything(sealing, before["id"])
        listed_env = {**backend.env, SETTING: account_ids[0]}
        sealed_now = subprocess.run(
            [sys.executable, "-m", "app", "keys", "seal-content", "--json"],
            cwd=REPO_ROOT, env=listed_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sealed_now.returncode == 0, sealed_now.stderr
        assert json.loads(sealed_now.stdout)["resealed"]["execution content: executions"] == 2
        assert SECRET not in stored(backend, before["id"])
        assert SECRET not in stored(backend, after["id"])
        assert SECRET in stored(backend, plain_id)
        assert everything(sealing, before["id"]) == early

        status = renum(backend, "keys", "status", "--json")
        assert status.returncode == 0, status.stderr
        counts = json.loads(status.stdout)["values"]
        assert counts["execution content: executions"] == {"qa": 3}
        assert counts["execution content: context"] == {"qa": 3}
    finally:
        for client in clients:
            client.close()
        backend.stop()
