"""Start-up: the base's migrations only when the database answers and its retries after a
degraded start (app.services.startup); the health capability's production rule (stop with a
summary, or start degraded when allowed) and its monitor switch."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from app.capabilities.health.startup import StartupBlocked, start_health
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.services import startup
from app.services.startup import StartUp
from qa.launcher import REPO_ROOT
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio

FAST = {"timeout_seconds": 0.5}
FAST_DATABASE = {"connect_timeout_seconds": 0.5, "retry_interval_seconds": 0.01}


def unreachable_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql+asyncpg://renum:pw@127.0.0.1:{port}/renum"


async def test_migrations_run_when_the_database_answers(make_settings: MakeSettings) -> None:
    settings = make_settings()
    database = SQLAlchemyManager(settings.database)
    try:
        await StartUp(settings, database).migrate_if_possible()
        assert await migrate.current_revision(database.engine) == migrate.head_revision()
    finally:
        await database.dispose()


async def test_migrations_are_skipped_when_the_database_does_not_answer(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(database={"url": unreachable_url(), **FAST_DATABASE})
    database = SQLAlchemyManager(settings.database)
    try:
        await StartUp(settings, database).migrate_if_possible()  # neither raises nor hangs
    finally:
        await database.dispose()
    assert "auto_migrate_skipped" in capsys.readouterr().out


async def test_a_failing_migration_is_left_to_the_validation(
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def broken(engine: object, revision: str = "head") -> None:
        raise RuntimeError("a migration failed")

    monkeypatch.setattr(startup.migrate, "upgrade", broken)
    settings = make_settings()
    database = SQLAlchemyManager(settings.database)
    try:
        await StartUp(settings, database).migrate_if_possible()
        assert await migrate.current_revision(database.engine) is None
    finally:
        await database.dispose()
    assert "auto_migrate_failed" in capsys.readouterr().out


async def test_a_degraded_start_migrates_and_bootstraps_once_the_database_allows(
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_upgrade = startup.migrate.upgrade
    attempts: list[str] = []
    heard: list[str] = []

    async def fails_twice(engine: object, revision: str = "head") -> None:
        attempts.append(revision)
        if len(attempts) < 3:
            raise RuntimeError("the database went away")
        await real_upgrade(engine, revision)  # type: ignore[arg-type]

    async def bootstrap(settings: object, database: object) -> None:
        heard.append("bootstrap")

    async def migrated() -> None:
        heard.append("migrated")

    monkeypatch.setattr(startup.migrate, "upgrade", fails_twice)
    monkeypatch.setattr(startup, "bootstrap", bootstrap)
    settings = make_settings(database=FAST_DATABASE, health={"monitor": False})
    database = SQLAlchemyManager(settings.database)
    start_up = StartUp(settings, database)
    start_up.on_migrated(migrated)
    try:
        await start_up.begin()
        monitor = await start_health(settings, database)
        assert (start_up.migrated, monitor.ready) == (False, False)  # the schema check fails
        await asyncio.wait_for(start_up.finished.wait(), 10)
        await monitor.refresh("database")  # the database file exists now
        await monitor.refresh("schema")
        assert monitor.ready is True
        assert await migrate.current_revision(database.engine) == migrate.head_revision()
    finally:
        await start_up.stop()
        await database.dispose()
    assert len(attempts) == 3
    assert heard == ["migrated", "bootstrap"]
    out = capsys.readouterr().out
    assert "auto_migrate_failed" in out
    assert "auto_migrate_completed" in out


async def test_a_failure_while_finishing_start_up_is_retried(
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[int] = []

    async def flaky_bootstrap(settings: object, database: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the database went away")

    async def broken_listener() -> None:
        raise RuntimeError("a listener failed")

    monkeypatch.setattr(startup, "bootstrap", flaky_bootstrap)
    settings = make_settings(database={**FAST_DATABASE, "auto_migrate": False})
    database = SQLAlchemyManager(settings.database)
    start_up = StartUp(settings, database)
    start_up.on_migrated(broken_listener)  # never called: nothing was left to migrate
    try:
        await start_up.begin()
        assert not start_up.finished.is_set()
        await asyncio.wait_for(start_up.finished.wait(), 10)
    finally:
        await start_up.stop()
        await database.dispose()
    assert len(calls) == 2
    assert "start_up_retry_failed" in capsys.readouterr().out


async def test_a_failing_listener_does_not_stop_the_retries(
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_upgrade = startup.migrate.upgrade
    attempts: list[str] = []

    async def fails_once(engine: object, revision: str = "head") -> None:
        attempts.append(revision)
        if len(attempts) < 2:
            raise RuntimeError("the database went away")
        await real_upgrade(engine, revision)  # type: ignore[arg-type]

    async def broken_listener() -> None:
        raise RuntimeError("a listener failed")

    monkeypatch.setattr(startup.migrate, "upgrade", fails_once)
    settings = make_settings(database=FAST_DATABASE)
    database = SQLAlchemyManager(settings.database)
    start_up = StartUp(settings, database)
    start_up.on_migrated(broken_listener)
    try:
        await start_up.begin()
        await asyncio.wait_for(start_up.finished.wait(), 10)
    finally:
        await start_up.stop()
        await database.dispose()
    assert start_up.migrated is True
    assert "start_up_retry_failed" in capsys.readouterr().out


async def test_outside_production_a_failed_critical_dependency_starts_degraded(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        database={"url": unreachable_url()},
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
        health={**FAST, "monitor": False},
    )
    database = SQLAlchemyManager(settings.database)
    try:
        monitor = await start_health(settings, database)
        assert monitor.ready is False
        assert monitor._tasks == []  # the monitor switch is off
        await monitor.stop()
    finally:
        await database.dispose()


async def test_production_stops_with_a_readable_summary(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        environment="production",
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
    )
    database = SQLAlchemyManager(settings.database)
    try:
        async with database.engine.connect():  # an empty database: migrations pending
            pass
        with pytest.raises(StartupBlocked) as blocked:
            await start_health(settings, database)
    finally:
        await database.dispose()
    message = str(blocked.value)
    assert message.startswith("Renum cannot start: a critical dependency failed.")
    assert "  - schema (alembic): migrations pending" in message
    assert "    fix: renum db upgrade" in message
    assert "RENUM_HEALTH__START_DEGRADED=true" in message
    assert message in capsys.readouterr().err


async def test_production_may_start_degraded(make_settings: MakeSettings) -> None:
    settings = make_settings(
        environment="production",
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
        health={"start_degraded": True},
    )
    database = SQLAlchemyManager(settings.database)
    try:
        monitor = await start_health(settings, database)
        assert monitor.ready is False
        assert len(monitor._tasks) == len(monitor.validator.checks)
        await monitor.stop()
    finally:
        await database.dispose()


def test_importing_and_creating_the_app_imports_no_optional_integration() -> None:
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "import app.cli\n"
        "create_app()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))\n"
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


async def test_without_the_redis_package_only_its_feature_is_disabled(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    settings = make_settings(
        redis_url="redis://127.0.0.1:6379/0",
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
        health={"monitor": False},
    )
    database = SQLAlchemyManager(settings.database)
    try:
        await StartUp(settings, database).migrate_if_possible()
        monitor = await start_health(settings, database)
    finally:
        await database.dispose()
    assert monitor.ready is True
    [redis] = [e for e in monitor.snapshot().entries if e.check == "redis"]
    assert redis.status.value == "warn"
    assert redis.fix == 'python -m pip install "renum[redis]"'
