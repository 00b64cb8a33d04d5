"""The database layer: UTC timestamps, the engine's SQLite pragmas, Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.dialects import sqlite

from app.core.config import DatabaseSettings
from app.db import migrate
from app.db.base import NAMING_CONVENTION, Base, UTCDateTime, utcnow
from app.db.database import Database, build_engine

EXPECTED_TABLES = {"accounts", "users", "api_keys", "refresh_tokens"}


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_utc_datetime_refuses_naive_datetimes() -> None:
    column = UTCDateTime()
    with pytest.raises(ValueError, match="naive datetimes are not stored"):
        column.process_bind_param(datetime(2024, 1, 1, 12, 0), sqlite.dialect())


def test_utc_datetime_stores_any_aware_datetime_as_utc() -> None:
    column = UTCDateTime()
    plus_two = timezone(timedelta(hours=2))
    stored = column.process_bind_param(datetime(2024, 1, 1, 14, 0, tzinfo=plus_two), None)  # type: ignore[arg-type]
    assert stored == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert stored is not None
    assert stored.tzinfo is UTC
    assert column.process_bind_param(None, None) is None  # type: ignore[arg-type]


def test_utc_datetime_returns_aware_utc() -> None:
    column = UTCDateTime()
    naive = column.process_result_value(datetime(2024, 5, 6, 7, 8), None)  # type: ignore[arg-type]
    assert naive == datetime(2024, 5, 6, 7, 8, tzinfo=UTC)
    assert naive is not None
    assert naive.tzinfo is UTC
    other = column.process_result_value(
        datetime(2024, 5, 6, 9, 8, tzinfo=timezone(timedelta(hours=2))),
        None,  # type: ignore[arg-type]
    )
    assert other == datetime(2024, 5, 6, 7, 8, tzinfo=UTC)
    assert other is not None
    assert other.utcoffset() == timedelta(0)
    assert column.process_result_value(None, None) is None  # type: ignore[arg-type]


def test_metadata_uses_the_naming_convention() -> None:
    import app.models  # noqa: F401  (registers the tables)

    assert Base.metadata.naming_convention == NAMING_CONVENTION
    assert set(Base.metadata.tables) >= EXPECTED_TABLES


@pytest.mark.anyio
async def test_utc_datetime_round_trips_through_sqlite(tmp_path: Path) -> None:
    from sqlalchemy import Column, Integer, MetaData, Table, insert, select

    metadata = MetaData()
    table = Table(
        "stamps", metadata, Column("id", Integer, primary_key=True), Column("at", UTCDateTime)
    )
    database = Database(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'stamps.db'}"))
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
            await conn.execute(insert(table).values(id=1, at=moment))
            stored = (await conn.execute(select(table.c.at))).scalar_one()
        assert stored == moment
        assert stored.tzinfo is UTC
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_sqlite_engine_creates_the_folder_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "renum.db"
    database = Database(DatabaseSettings(url=f"sqlite+aiosqlite:///{path}"))
    try:
        assert path.parent.is_dir()
        await database.ping()
        async with database.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
        async with database.session() as session:
            assert (await session.execute(text("SELECT 41 + 1"))).scalar() == 42
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_in_memory_sqlite_needs_no_folder() -> None:
    engine = build_engine(DatabaseSettings(url="sqlite+aiosqlite:///:memory:"))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


def test_postgresql_engine_is_built_lazily_with_a_pool() -> None:
    engine = build_engine(
        DatabaseSettings(url="postgresql+asyncpg://renum@127.0.0.1:1/none", pool_size=3)
    )
    assert engine.dialect.name == "postgresql"
    assert engine.pool.size() == 3  # type: ignore[attr-defined]
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


def test_head_revision_is_the_latest_migration() -> None:
    head = migrate.head_revision()
    versions = migrate.MIGRATIONS_DIR / "versions"
    assert head
    assert any(path.name.startswith(head) for path in versions.glob("*.py"))


@pytest.mark.anyio
async def test_upgrade_current_downgrade(tmp_path: Path) -> None:
    database = Database(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"))
    try:
        assert await migrate.current_revision(database.engine) is None
        await migrate.upgrade(database.engine)
        assert await migrate.current_revision(database.engine) == migrate.head_revision()
        async with database.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables >= EXPECTED_TABLES
            user_indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("users"))
            assert any(index["column_names"] == ["account_id"] for index in user_indexes)
        await migrate.upgrade(database.engine)  # idempotent
        await migrate.downgrade(database.engine, "base")
        assert await migrate.current_revision(database.engine) is None
        async with database.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert not (EXPECTED_TABLES & tables)
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_migrations_match_the_models(tmp_path: Path) -> None:
    """No model change without a migration: autogenerate finds nothing to do at head."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import app.models  # noqa: F401

    database = Database(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'diff.db'}"))
    try:
        await migrate.upgrade(database.engine)
        async with database.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
                )
            )
        assert diff == []
    finally:
        await database.dispose()
