"""``SQLAlchemyManager.run_transaction``: one synchronous transaction in one hop, on an SQLite
file (its own worker thread and connection) and on PostgreSQL (``run_sync``): committed when the
work returns, rolled back when it raises, and usable again after a failure and after dispose.

In this process, no backend launched; on each database given with ``--db`` (the behaviour is
the database's: marked ``both_databases``)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from app.core.config import DatabaseSettings
from app.db.database import SQLAlchemyManager
from qa import services

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def database(db_flavour: str, tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    if db_flavour not in ("sqlite", "postgresql"):
        pytest.skip("needs a local database; --target names a deployment")
    name = None
    if db_flavour == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tx.db'}"
    else:
        name = f"renum_tx_{uuid.uuid4().hex[:10]}"
        url = await asyncio.to_thread(services.create_postgres_database, name)
    db = SQLAlchemyManager(DatabaseSettings(url=url))
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        await conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    try:
        yield db
    finally:
        await db.dispose()
        if name is not None:
            await asyncio.to_thread(services.drop_postgres_database, name)


def _add(conn: Connection) -> int:
    conn.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
    return int(conn.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one())


def _add_then_fail(conn: Connection) -> None:
    _add(conn)
    raise RuntimeError("the work failed")


async def _count(db: SQLAlchemyManager) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(text("SELECT n FROM counter"))).scalar_one())


async def test_work_is_committed_when_it_returns(database: SQLAlchemyManager) -> None:
    assert await database.run_transaction(_add) == 1
    assert await database.run_transaction(_add) == 2
    assert await _count(database) == 2  # seen by the application's own engine


async def test_work_is_rolled_back_when_it_raises_and_the_next_runs(
    database: SQLAlchemyManager,
) -> None:
    with pytest.raises(RuntimeError, match="the work failed"):
        await database.run_transaction(_add_then_fail)
    assert await _count(database) == 0
    assert await database.run_transaction(_add) == 1


async def test_sqlite_work_runs_in_one_worker_thread_off_the_loop(tmp_path: Path) -> None:
    db = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"))
    try:
        threads = {await db.run_transaction(lambda _: threading.get_ident()) for _ in range(3)}
        assert len(threads) == 1
        assert threading.get_ident() not in threads
        journal = await db.run_transaction(
            lambda conn: conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        )
        assert journal == "wal"
    finally:
        await db.dispose()
    # A disposed database starts a new worker when used again.
    try:
        assert await db.run_transaction(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    finally:
        await db.dispose()
