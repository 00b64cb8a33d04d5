"""The database layer: UTC timestamps, the engine's SQLite pragmas and begin modes, hidden SQL
parameters, the health round trip that never waits for a writer, Alembic migrations."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from app.core.config import DatabaseSettings
from app.db import migrate
from app.db.base import NAMING_CONVENTION, Base, UTCDateTime, utcnow
from app.db.database import (
    READ_ONLY,
    SQLAlchemyManager,
    build_engine,
    build_probe_engine,
    build_sync_sqlite_engine,
)
from app.db.pool import is_transient
from qa.polling import wait_until_async

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
    database = SQLAlchemyManager(
        DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'stamps.db'}")
    )
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
async def test_sqlite_engine_creates_the_folder_when_it_connects_and_sets_pragmas(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep" / "er" / "renum.db"
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{path}"))
    try:
        with pytest.raises(OperationalError):  # looking creates nothing
            await database.ping()
        assert not (tmp_path / "deep").exists()
        async with database.engine.connect() as conn:
            assert path.is_file()
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
        async with database.session() as session:
            assert (await session.execute(text("SELECT 41 + 1"))).scalar() == 42
        await database.ping()
    finally:
        await database.dispose()


def _names(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


@pytest.mark.anyio
@pytest.mark.parametrize("folder", ["plain", "ask?me", "hash#tag", "per%41cent"])
async def test_looking_at_an_sqlite_file_never_creates_it_whatever_its_path(
    tmp_path: Path, folder: str
) -> None:
    path = tmp_path / folder / "renum.db"
    path.parent.mkdir()
    escaped = str(path).replace("%", "%25").replace("?", "%3F").replace("#", "%23")
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{escaped}"))
    try:
        with pytest.raises(OperationalError):
            await database.ping()
        assert _names(path.parent) == []  # not even a truncated name beside it
        async with database.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        await database.ping()  # the same file, now that it exists
        assert path.is_file()
    finally:
        await database.dispose()
    assert _names(tmp_path) == [folder]


def test_the_probe_of_an_sqlite_uri_opens_it_read_write_only() -> None:
    engine = build_probe_engine(DatabaseSettings(url="sqlite+aiosqlite:///file:/srv/r.db?uri=1"))
    assert engine.url.query["mode"] == "rw"
    kept = build_probe_engine(
        DatabaseSettings(url="sqlite+aiosqlite:///file:/srv/r.db?mode=ro&uri=true")
    )
    assert kept.url.query["mode"] == "ro"


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


def test_every_engine_hides_sql_parameters(tmp_path: Path) -> None:
    sqlite_settings = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    pg_settings = DatabaseSettings(url="postgresql+asyncpg://renum@127.0.0.1:1/none")
    engines = [
        build_engine(sqlite_settings).sync_engine,
        build_engine(pg_settings).sync_engine,
        build_probe_engine(sqlite_settings).sync_engine,
        build_probe_engine(pg_settings).sync_engine,
        build_sync_sqlite_engine(
            make_url(sqlite_settings.url).set(drivername="sqlite"), sqlite_settings
        ),
    ]
    assert all(engine.hide_parameters for engine in engines)


@pytest.mark.anyio
async def test_a_failed_statement_error_does_not_carry_its_parameters(tmp_path: Path) -> None:
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    try:
        async with database.engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(text("SELECT :prompt + no_such_column"), {"prompt": "s3cr3t"})
        assert "s3cr3t" not in str(caught.value)
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(caught.value)
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_sqlite_transactions_begin_immediate_unless_read_only(tmp_path: Path) -> None:
    """A writer holds SQLite's write lock: a read-only transaction (and the health round
    trips) still run, a normal one (BEGIN IMMEDIATE) waits for its turn, and after the busy
    timeout fails as SQLite would ("database is locked")."""
    path = tmp_path / "lock.db"
    database = SQLAlchemyManager(
        DatabaseSettings(url=f"sqlite+aiosqlite:///{path}", sqlite_busy_timeout_ms=100)
    )
    try:
        await migrate.upgrade(database.engine)
        async with database.engine.connect() as writer:
            await writer.execute(text("CREATE TABLE t (n INTEGER)"))
            await writer.commit()
            await writer.execute(text("INSERT INTO t VALUES (1)"))  # holds the write lock
            async with database.engine.connect() as reader:
                reader = await reader.execution_options(**READ_ONLY)
                assert (await reader.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            assert (await database.server_version()).startswith("3.")
            await database.ping()
            head = migrate.head_revision()
            assert await migrate.current_revision(database.probe_engine) == head
            async with database.engine.connect() as blocked:
                with pytest.raises(OperationalError, match="locked"):
                    await blocked.execute(text("SELECT 1"))
    finally:
        await database.dispose()


@pytest.fixture
async def counted_table(tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    """An SQLite database with a table ``t (n)``, writers waiting at most 5 s for a turn."""
    database = SQLAlchemyManager(
        DatabaseSettings(
            url=f"sqlite+aiosqlite:///{tmp_path / 't.db'}", sqlite_busy_timeout_ms=5000
        )
    )
    async with database.session() as session:
        await session.execute(text("CREATE TABLE t (n INTEGER)"))
        await session.commit()
    try:
        yield database
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_sqlite_writers_take_the_write_lock_in_arrival_order(
    counted_table: SQLAlchemyManager,
) -> None:
    """While one writer holds the lock, the writers that arrive (sessions and the engine's
    ``run_transaction`` alike) queue in this process and write in the order they came."""
    database = counted_table
    holding, finish = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with database.session() as session:
            await session.execute(text("INSERT INTO t VALUES (0)"))
            holding.set()
            await finish.wait()
            await session.commit()

    async def session_writer(n: int) -> None:
        async with database.session() as session:
            await session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            await session.commit()

    async def engine_writer(n: int) -> None:
        await database.run_transaction(
            lambda conn: conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
        )

    first = asyncio.create_task(holder())
    await holding.wait()
    writers = []
    turns = database.writers
    assert turns is not None
    for n in range(1, 13):
        write = engine_writer if n % 3 == 0 else session_writer
        writers.append(asyncio.create_task(write(n)))
        # Queued before the next one arrives.
        await wait_until_async(
            functools.partial(lambda n: turns.waiting >= n, n), timeout=5, what=f"writer {n} queued"
        )
    finish.set()
    await asyncio.gather(first, *writers)
    async with database.session() as session:
        order = (await session.scalars(text("SELECT n FROM t ORDER BY rowid"))).all()
    assert list(order) == list(range(13))


@pytest.mark.anyio
async def test_an_invalidated_writer_gives_its_turn_back(
    counted_table: SQLAlchemyManager,
) -> None:
    """A write transaction whose connection is invalidated (what a statement cancelled under
    it does: a request timed out, a task stopped at shutdown) ends its turn, and ends cleanly:
    the next writer gets the lock, instead of "database is locked" after waiting the whole
    timeout for a lost turn."""
    database = counted_table
    async with database.engine.connect() as conn:
        await conn.execute(text("INSERT INTO t VALUES (1)"))
        await conn.invalidate()
    async with database.session() as session:
        await session.execute(text("INSERT INTO t VALUES (2)"))
        await session.commit()
        assert (await session.scalar(text("SELECT group_concat(n) FROM t"))) == "2"


@pytest.mark.anyio
async def test_a_writer_that_waits_past_the_busy_timeout_fails_as_locked(
    counted_table: SQLAlchemyManager,
) -> None:
    database = counted_table
    assert database.writers is not None
    async with database.writers.turn():  # someone else in this process is writing
        database.writers.timeout_seconds = 0.05
        with pytest.raises(OperationalError, match="database is locked") as refused:
            await database.run_transaction(lambda conn: None)
    assert is_transient(refused.value)  # answered 503 with Retry-After, reads tried again


@pytest.mark.anyio
async def test_an_unknown_sqlite_begin_mode_is_refused(tmp_path: Path) -> None:
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"))
    try:
        async with database.engine.connect() as conn:
            conn = await conn.execution_options(renum_sqlite_begin="EXCLUSIVE; DROP TABLE x")
            with pytest.raises(ValueError, match="renum_sqlite_begin"):
                await conn.execute(text("SELECT 1"))
    finally:
        await database.dispose()


def test_head_revision_is_the_latest_migration() -> None:
    head = migrate.head_revision()
    versions = migrate.MIGRATIONS_DIR / "versions"
    assert head
    assert any(path.name.startswith(head) for path in versions.glob("*.py"))


@pytest.mark.anyio
async def test_upgrade_current_downgrade(tmp_path: Path) -> None:
    database = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"))
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

    database = SQLAlchemyManager(
        DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'diff.db'}")
    )
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
