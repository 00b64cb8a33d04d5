"""The rollups through the real backend: the executions an account runs and their model calls
are rolled up as they end, the usage figures read the same before and after, and `renum
analytics rebuild` (run beside the running backend) gives the same rollups again."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import teams_support as ts
from integration_support import Cli, cli_env
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.core.config import DatabaseSettings
from app.db.base import Base
from app.db.database import build_engine
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Reply
from qa.launcher import Backend, LaunchedBackend
from qa.polling import wait_until

pytestmark = pytest.mark.both_databases

TABLES = Base.metadata.tables
fresh_account = ts.fresh_account


@pytest.fixture
def database_url(backend: Backend) -> str:
    if not isinstance(backend, LaunchedBackend):
        pytest.skip("reads the database of a backend the harness launched")
    return backend.env["RENUM_DATABASE__URL"]


def read(url: str, work: Any) -> Any:
    async def run() -> Any:
        engine = build_engine(DatabaseSettings(url=url))
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def unrolled(url: str, account: uuid.UUID) -> int:
    """The account's executions and model calls not rolled up yet."""

    async def count(engine: AsyncEngine) -> int:
        found = 0
        async with engine.connect() as conn:
            for name in ("executions", "ledger_entries"):
                table = TABLES[name]
                query = select(func.count()).where(
                    table.c.account_id == account, ~table.c.rolled_up
                )
                found += int((await conn.execute(query.select_from(table))).scalar_one())
        return found

    result: int = read(url, count)
    return result


def rollups_of(url: str, account: uuid.UUID) -> dict[str, list[tuple[Any, ...]]]:
    """The account's rollup rows, by table, as sorted tuples."""

    async def rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
        found = {}
        async with engine.connect() as conn:
            for name in ("usage_rollups", "execution_rollups"):
                table = TABLES[name]
                result = await conn.execute(select(table).where(table.c.account_id == account))
                found[name] = sorted(tuple(row) for row in result)
        return found

    result: dict[str, list[tuple[Any, ...]]] = read(url, rows)
    return result


def usage(client: Any, since: datetime, until: datetime, group_by: str) -> dict[str, Any]:
    params = {"from": since.isoformat(), "to": until.isoformat(), "group_by": group_by}
    report: dict[str, Any] = expect(client.get(ts.USAGE, params=params), 200)
    return report


def test_ended_executions_are_rolled_up_and_usage_reads_the_same(
    fresh_account: ts.Account, fake_openai: FakeOpenAI, database_url: str, tmp_path: Path
) -> None:
    owner = fresh_account.owner
    account = uuid.UUID(fresh_account.id)
    mini = ts.model_agent(owner, fake_openai.base_url, model="gpt-4o-mini")
    four = ts.model_agent(owner, fake_openai.base_url, model="gpt-4o")
    flow = ts.workflow("sequential", [ts.step("a", mini), ts.step("b", four)])
    team = ts.create_team(owner, [mini, four], flow)
    since = datetime.now(UTC) - timedelta(minutes=1)  # inside an hour: its rest is partial
    fake_openai.script(
        Reply("1", input_tokens=10, output_tokens=1),
        Reply("2", input_tokens=20, output_tokens=2),
        Reply("3", input_tokens=30, output_tokens=3),
        Reply("4", input_tokens=40, output_tokens=4),
    )
    for _ in range(2):
        assert ts.run_to_end(owner, team)["status"] == "completed"
    until = datetime.now(UTC) + timedelta(hours=3)
    before = {group: usage(owner, since, until, group) for group in ("model", "team", "agent")}
    assert before["team"]["total"]["calls"] == 4
    assert before["team"]["total"]["input_tokens"] == 100

    # The folder rolls them up as they end (its interval is half a minute: this is the kick).
    wait_until(lambda: unrolled(database_url, account) == 0, 30, "everything rolled up")
    rolled = rollups_of(database_url, account)
    calls = {row[1]: 0 for row in rolled["usage_rollups"]}  # grain -> calls
    for row in rolled["usage_rollups"]:
        calls[row[1]] += row[TABLES["usage_rollups"].c.keys().index("calls")]
    assert calls == {"hour": 4, "day": 4}
    executions = TABLES["execution_rollups"].c.keys()
    days = [row for row in rolled["execution_rollups"] if row[1] == "day"]
    assert [
        (row[executions.index("status")], row[executions.index("executions")]) for row in days
    ] == [("completed", 2)]

    # The same figures from the rollups (another `to`: a new answer, not the cached one).
    later = until + timedelta(microseconds=1)
    after = {group: usage(owner, since, later, group) for group in ("model", "team", "agent")}
    assert after == before
    everything = expect(owner.get(ts.USAGE, params={"group_by": "model"}), 200)
    assert everything["rows"] == before["model"]["rows"]

    # A rebuild beside the running backend gives the same rollups.
    cli = Cli(
        env=cli_env(
            RENUM_ENVIRONMENT="test",
            RENUM_SECRET_KEY="rollup-test-secret-key-0123456789abcdefghijk",
            RENUM_DATABASE__URL=database_url,
        ),
        cwd=tmp_path,
    )
    result = cli("analytics", "rebuild")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"from \d+ ended executions and \d+ model calls", result.stdout)
    assert rollups_of(database_url, account) == rolled
