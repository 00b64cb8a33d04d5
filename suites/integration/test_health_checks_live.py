"""The database and Redis checks against the live local PostgreSQL and Redis, in this process:
a healthy server passes, wrong credentials and a missing database are named as such. (The
checks' other answers, which need no server, are unit tests: suites/unit/test_health_checks.py.)

No backend is launched: these tests run once whatever ``--db`` says.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.capabilities.health.checks import CheckContext, CheckOutcome, DatabaseCheck, RedisCheck
from app.capabilities.health.registry import Status
from app.core.config import Settings
from app.db.database import SQLAlchemyManager
from qa import services

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MakeSettings:
    """Settings from the code's defaults and ``overrides`` only: no ``RENUM_*`` variable and
    no ``.env`` file of the developer's is read."""
    for name in list(os.environ):
        if name.startswith("RENUM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "secret_key": "live-checks-secret-key-0123456789abcdefghijkl",
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'checks.db'}"},
            **overrides,
        }
        return Settings(**values)

    return make


async def outcome_of(check: DatabaseCheck | RedisCheck, settings: Settings) -> CheckOutcome:
    database = SQLAlchemyManager(settings.database)
    try:
        context = CheckContext(settings=settings, database=database, timeout_seconds=5.0)
        [outcome] = await check.run(context)
    finally:
        await database.dispose()
    return outcome


PostgresOutcome = Callable[[str], Awaitable[CheckOutcome]]


@pytest.fixture
def postgres_outcome(make_settings: MakeSettings) -> PostgresOutcome:
    """``await postgres_outcome(url)``: the database check's outcome on that PostgreSQL URL."""
    services.postgres().require()

    async def run(url: str) -> CheckOutcome:
        return await outcome_of(DatabaseCheck(), make_settings(database={"url": url}))

    return run


async def test_postgresql_passes(postgres_outcome: PostgresOutcome) -> None:
    outcome = await postgres_outcome(services.postgres().url)
    assert outcome.status is Status.passed
    assert outcome.component_id == "postgresql"
    assert outcome.message.startswith("PostgreSQL ")


async def test_postgresql_wrong_user_is_a_credentials_problem(
    postgres_outcome: PostgresOutcome,
) -> None:
    url = services.postgres().url.replace("postgres@", f"nobody_{uuid.uuid4().hex[:6]}@", 1)
    outcome = await postgres_outcome(url)
    assert outcome.status is Status.fail
    assert "refused the credentials" in outcome.message
    assert outcome.fix == "Check the user and password in RENUM_DATABASE__URL."


async def test_postgresql_missing_database_says_so(postgres_outcome: PostgresOutcome) -> None:
    base = services.postgres().url.rsplit("/", 1)[0]
    outcome = await postgres_outcome(f"{base}/renum_missing_{uuid.uuid4().hex}")
    assert outcome.status is Status.fail
    assert "does not exist" in outcome.message
    assert "createdb" in (outcome.fix or "")


async def test_redis_live_server_passes(make_settings: MakeSettings) -> None:
    services.redis().require()
    outcome = await outcome_of(RedisCheck(), make_settings(redis_url=services.redis().url))
    assert outcome.status is Status.passed, outcome.message
    assert outcome.message.startswith("Redis ")


async def test_redis_wrong_password_is_reported(make_settings: MakeSettings) -> None:
    services.redis().require()
    url = services.redis().url.replace("redis://", "redis://nobody:wrong@", 1)
    outcome = await outcome_of(RedisCheck(), make_settings(redis_url=url))
    assert outcome.status is Status.fail
    assert outcome.fix == "Check the password in RENUM_REDIS_URL."
