"""Logged database errors carry no statement values. On PostgreSQL a failed statement used to
log its parameters (a prompt, an API key's hash) and the row PostgreSQL echoes back
(`DETAIL: Failing row contains (...)`); now every engine hides parameters and the logged
traceback loses what the driver echoes.

The API-level test provokes real errors through the API: a CHECK constraint added to the
launched backend's own database refuses rows carrying a canary, so creating an execution or
an API key with it fails inside PostgreSQL and is answered 500 (logged with its traceback).
The engine-level test provokes the driver's other value-echoing errors directly."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.core.config import DatabaseSettings, Settings
from app.core.logging import configure_logging, get_logger
from app.db.database import SQLAlchemyManager
from qa import services
from qa.client import API
from qa.factories import expect, tenant_with_owner
from qa.plugin import LaunchBackend

# Both databases: what a failed statement logs depends on the driver.
pytestmark = pytest.mark.both_databases

SHA256_HEX = re.compile(r"\b[0-9a-f]{64}\b")


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _unhandled_errors(log: str) -> list[dict[str, Any]]:
    events = []
    for line in log.splitlines():
        if line.startswith("{") and '"unhandled_error"' in line:
            events.append(json.loads(line))
    return events


def test_a_database_error_through_the_api_logs_no_values(launch_backend: LaunchBackend) -> None:
    services.postgres().require()
    backend = launch_backend("postgresql")
    canary = f"canary-{uuid.uuid4().hex}"
    url = backend.env["RENUM_DATABASE__URL"]
    asyncio.run(
        _execute(
            url,
            "ALTER TABLE executions ADD CONSTRAINT ck_no_canary "
            f"CHECK (prompt NOT LIKE '%{canary}%');"
            "ALTER TABLE api_keys ADD CONSTRAINT ck_no_canary_key "
            f"CHECK (name NOT LIKE '{canary}%')",
        )
    )
    _, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    try:
        agent = expect(
            owner.post(f"{API}/agents", json={"name": "e", "provider": "builtin", "model": "echo"}),
            201,
        )
        team = expect(
            owner.post(f"{API}/teams", json={"name": "t", "agent_ids": [agent["id"]]}), 201
        )
        prompt = f"the user's confidential prompt {canary}"
        failed = owner.post(f"{API}/teams/{team['id']}/executions", json={"prompt": prompt})
        assert failed.status_code == 500, failed.text
        key = owner.post(f"{API}/api-keys", json={"name": f"{canary} key"})
        assert key.status_code == 500, key.text
        for response in (failed, key):
            assert canary not in response.text
    finally:
        owner.close()

    log = backend.log_text()
    errors = _unhandled_errors(log)
    assert len(errors) == 2, "both failures were logged with their traceback"
    for event in errors:
        rendered = str(event["exception"])
        assert "IntegrityError" in rendered or "CheckViolation" in rendered
        assert "ck_no_canary" in rendered  # the constraint's name stays: it is no value
        assert "[SQL parameters hidden" in rendered
        assert not SHA256_HEX.search(rendered), "an API key's hash reached the log"
    assert canary not in log
    assert "Failing row contains" not in log


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped after the test."""
    services.postgres().require()
    name = f"renum_logs_{uuid.uuid4().hex[:10]}"
    try:
        yield services.create_postgres_database(name)
    finally:
        services.drop_postgres_database(name)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The application's JSON logging, written to a buffer."""
    configure_logging(Settings(log_format="json"))
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    stream = handler.stream  # type: ignore[attr-defined]
    handler.stream = buffer  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        handler.stream = stream  # type: ignore[attr-defined]


STATEMENTS = {
    "unique violation (DETAIL echoes the key)": (
        "INSERT INTO t (id, secret) VALUES (:id, :secret)",
        {"id": 2, "secret": "{canary}"},
    ),
    "check violation (DETAIL echoes the row)": (
        "INSERT INTO t (id, secret, n) VALUES (:id, :secret, :n)",
        {"id": 3, "secret": "other {canary}", "n": -1},
    ),
    "a parameter of the wrong type (asyncpg echoes it)": (
        "INSERT INTO t (id, secret) VALUES (:id, :secret)",
        {"id": "{canary}", "secret": "x"},
    ),
    "a text parameter that is no uuid (echoed in the message)": (
        "SELECT CAST(:value AS uuid)",
        {"value": "{canary}"},
    ),
}


@pytest.mark.parametrize("case", STATEMENTS)
def test_postgresql_errors_logged_by_the_application_carry_no_values(
    postgres_url: str, json_log: io.StringIO, case: str
) -> None:
    canary = f"canary-{uuid.uuid4().hex[:12]}"
    statement, template = STATEMENTS[case]
    params = {k: v.format(canary=canary) if isinstance(v, str) else v for k, v in template.items()}

    async def provoke() -> None:
        database = SQLAlchemyManager(DatabaseSettings(url=postgres_url))
        try:
            await fail(database)
        finally:
            await database.dispose()

    async def fail(database: SQLAlchemyManager) -> None:
        async with database.engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS t "
                    "(id int PRIMARY KEY, secret text UNIQUE, n int CHECK (n >= 0))"
                )
            )
            await conn.execute(
                text("INSERT INTO t (id, secret) VALUES (1, :secret) ON CONFLICT DO NOTHING"),
                {"secret": canary},
            )
        with pytest.raises(DBAPIError) as caught:
            async with database.engine.begin() as conn:
                await conn.execute(text(statement), params)
        # SQLAlchemy's own part of the message lists no parameters.
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(caught.value)
        get_logger("test.logs").error("unhandled_error", exc_info=caught.value)

    asyncio.run(provoke())
    (line,) = [json.loads(raw) for raw in json_log.getvalue().splitlines() if raw.startswith("{")]
    rendered = str(line["exception"])
    assert "Traceback" in rendered
    assert canary not in json_log.getvalue()
