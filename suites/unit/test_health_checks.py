"""The built-in checks one by one: database (SQLite, PostgreSQL unreachable, errors), schema
revision, Redis (not configured, package missing, unreachable), model providers (every answer).
The checks against the live local PostgreSQL and Redis are in
``suites/integration/test_health_checks_live.py``: the unit suite needs no server."""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from packaging.version import Version

from app.capabilities.health import checks
from app.capabilities.health.checks import (
    CheckContext,
    DatabaseCheck,
    ProvidersCheck,
    RedisCheck,
    SchemaCheck,
    probe_provider,
    provider_base_urls,
    safe_url,
)
from app.capabilities.health.registry import Status
from app.core.config import Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.models.account import Account
from app.models.agent import Agent
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[SQLAlchemyManager]:
    db = SQLAlchemyManager(settings.database)
    await migrate.upgrade(db.engine)
    yield db
    await db.dispose()


def context(settings: Settings, database: SQLAlchemyManager, timeout: float = 2.0) -> CheckContext:
    return CheckContext(settings=settings, database=database, timeout_seconds=timeout)


def test_safe_url_drops_credentials_query_and_fragment() -> None:
    assert safe_url("redis://:secret@cache:6380/0?x=1#f") == "redis://cache:6380/0"
    assert safe_url("https://user:pw@api.example/v1") == "https://api.example/v1"


# --- database -------------------------------------------------------------------------------


async def test_database_passes_with_version_and_latency(
    settings: Settings, database: SQLAlchemyManager
):
    [outcome] = await DatabaseCheck().run(context(settings, database))
    assert outcome.status is Status.passed
    assert outcome.component_id == "sqlite"
    assert outcome.message.startswith("SQLite 3.")
    assert outcome.observed_unit == "ms"
    assert isinstance(outcome.observed_value, float)


async def test_database_older_than_supported_fails(
    settings: Settings, database: SQLAlchemyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks, "MIN_SQLITE", Version("99.0"))
    [outcome] = await DatabaseCheck().run(context(settings, database))
    assert outcome.status is Status.fail
    assert "older than the oldest supported, 99.0" in outcome.message
    assert outcome.fix == "Upgrade SQLite to 99.0 or newer."


async def postgres_outcome(make_settings: MakeSettings, url: str) -> checks.CheckOutcome:
    settings = make_settings(database={"url": url})
    db = SQLAlchemyManager(settings.database)
    try:
        [outcome] = await DatabaseCheck().run(context(settings, db))
    finally:
        await db.dispose()
    return outcome


async def test_postgresql_unreachable_names_the_host_without_the_password(
    make_settings: MakeSettings,
) -> None:
    url = f"postgresql+asyncpg://renum:hunter2secret@127.0.0.1:{closed_port()}/renum"
    outcome = await postgres_outcome(make_settings, url)
    assert outcome.status is Status.fail
    assert "cannot connect to postgresql+asyncpg://renum:***@127.0.0.1" in outcome.message
    assert "hunter2secret" not in outcome.message
    assert "RENUM_DATABASE__URL" in (outcome.fix or "")


# --- schema ---------------------------------------------------------------------------------


async def test_schema_at_head_passes(settings: Settings, database: SQLAlchemyManager) -> None:
    [outcome] = await SchemaCheck().run(context(settings, database))
    assert outcome.status is Status.passed
    assert outcome.observed_value == migrate.head_revision()


async def test_pending_migrations_fail_with_renum_db_upgrade(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    await migrate.downgrade(database.engine, "-1")
    [outcome] = await SchemaCheck().run(context(settings, database))
    assert outcome.status is Status.fail
    assert outcome.message.startswith("migrations pending")
    assert outcome.fix == "renum db upgrade"


async def test_empty_database_has_no_revision(make_settings: MakeSettings) -> None:
    settings = make_settings()
    db = SQLAlchemyManager(settings.database)
    try:
        async with db.engine.connect():  # an empty database (a check never creates one)
            pass
        [outcome] = await SchemaCheck().run(context(settings, db))
    finally:
        await db.dispose()
    assert "the database is at no revision" in outcome.message
    assert outcome.fix == "renum db upgrade"


async def test_unknown_revision_belongs_to_another_release(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    from sqlalchemy import text

    async with database.engine.begin() as conn:
        await conn.execute(text("update alembic_version set version_num = 'f00d'"))
    [outcome] = await SchemaCheck().run(context(settings, database))
    assert outcome.status is Status.fail
    assert "which this code does not know" in outcome.message


async def test_schema_unreadable_when_the_database_is_unreachable(
    make_settings: MakeSettings,
) -> None:
    url = f"postgresql+asyncpg://renum@127.0.0.1:{closed_port()}/renum"
    settings = make_settings(database={"url": url})
    db = SQLAlchemyManager(settings.database)
    try:
        [outcome] = await SchemaCheck().run(context(settings, db))
    finally:
        await db.dispose()
    assert outcome.status is Status.fail
    assert outcome.message.startswith("cannot read the migration revision")


# --- redis ----------------------------------------------------------------------------------


async def test_redis_not_configured_passes(settings: Settings, database: SQLAlchemyManager) -> None:
    [outcome] = await RedisCheck().run(context(settings, database))
    assert outcome.status is Status.passed
    assert outcome.message.startswith("not configured")


async def test_redis_configured_without_the_package_warns(
    make_settings: MakeSettings, database: SQLAlchemyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    settings = make_settings(redis_url="redis://127.0.0.1:6379/0")
    [outcome] = await RedisCheck().run(context(settings, database))
    assert outcome.status is Status.warn
    assert outcome.fix == 'python -m pip install "renum[redis]"'


async def test_redis_unreachable_fails_with_a_fix(
    make_settings: MakeSettings, database: SQLAlchemyManager
) -> None:
    settings = make_settings(redis_url=f"redis://:pw@127.0.0.1:{closed_port()}/0")
    [outcome] = await RedisCheck().run(context(settings, database))
    assert outcome.status is Status.fail
    assert outcome.component_id.startswith("redis://127.0.0.1:")
    assert "did not answer" in outcome.message
    assert "pw" not in outcome.component_id
    assert "Start or reach the Redis server" in (outcome.fix or "")


# --- providers ------------------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


async def probe(handler: Handler, key: str | None = None) -> checks.CheckOutcome:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await probe_provider(client, "https://llm.example/v1", key)


async def test_provider_answering_json_passes_and_sends_the_key_only_when_given() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    outcome = await probe(handler, key="sk-platform")
    assert outcome.status is Status.passed
    assert outcome.message == "reachable (HTTP 200)"
    assert seen[0].url == "https://llm.example/v1/models"
    assert seen[0].method == "GET"
    assert seen[0].headers["authorization"] == "Bearer sk-platform"
    await probe(handler)
    assert "authorization" not in seen[1].headers


async def test_provider_answering_html_is_a_clear_failure() -> None:
    outcome = await probe(lambda r: httpx.Response(200, html="<html>Welcome</html>"))
    assert outcome.status is Status.fail
    assert "answered HTML (HTTP 200), not an OpenAI-compatible API" in outcome.message
    assert "/v1" in (outcome.fix or "")


@pytest.mark.parametrize(
    ("status", "key", "expected", "text"),
    [
        (503, None, Status.fail, "answered HTTP 503"),
        (401, "sk-bad", Status.warn, "refused the platform key"),
        (401, None, Status.passed, "reachable (HTTP 401)"),
        (404, None, Status.warn, "/models answered HTTP 404"),
        (302, None, Status.warn, "/models redirects (HTTP 302)"),
    ],
)
async def test_provider_status_codes(
    status: int, key: str | None, expected: Status, text: str
) -> None:
    outcome = await probe(lambda r: httpx.Response(status, json={"error": {}}), key=key)
    assert outcome.status is expected
    assert text in outcome.message


async def test_provider_connection_error_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    outcome = await probe(handler)
    assert outcome.status is Status.fail
    assert "cannot reach https://llm.example/v1" in outcome.message


async def test_only_the_platform_url_is_probed_never_an_agents(
    make_settings: MakeSettings, database: SQLAlchemyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        providers={"openai_base_url": "http://platform/v1/", "openai_api_key": "sk-platform"}
    )
    async with database.session() as session:
        account = Account(name="acme", name_key=f"acme-{uuid.uuid4().hex}")
        session.add(account)
        await session.flush()
        for name, url in [("a", "http://127.0.0.1:6379/v1"), ("b", "http://10.0.0.7/v1")]:
            session.add(
                Agent(account_id=account.id, name=name, provider="openai", model="m", base_url=url)
            )
        await session.commit()
    assert provider_base_urls(settings) == ["http://platform/v1"]
    sent: list[tuple[str, str | None]] = []

    async def fake_probe(
        client: httpx.AsyncClient, url: str, key: str | None
    ) -> checks.CheckOutcome:
        sent.append((url, key))
        return checks.CheckOutcome(url, Status.passed, "reachable (HTTP 200)")

    monkeypatch.setattr(checks, "probe_provider", fake_probe)
    outcomes = await ProvidersCheck().run(context(settings, database))
    assert sent == [("http://platform/v1", "sk-platform")]
    assert [o.component_id for o in outcomes] == ["http://platform/v1"]


async def test_an_unreachable_platform_url_fails(
    make_settings: MakeSettings, database: SQLAlchemyManager
) -> None:
    settings = make_settings(providers={"openai_base_url": f"http://127.0.0.1:{closed_port()}/v1"})
    [outcome] = await ProvidersCheck().run(context(settings, database, timeout=1.0))
    assert outcome.component_id == settings.providers.openai_base_url
    assert outcome.status is Status.fail
