"""``SQLAlchemyManager.run_transaction``: one synchronous transaction in one hop, on an SQLite
file (its own worker thread and connection) and on PostgreSQL (``run_sync``): committed when the
work returns, rolled back when it raises, and usable again after a failure and after dispose.

In this process, no backend launched; on each database given with ``--db`` (the behaviour is
the database's: marked ``both_databases``)."""

from __future__ import annotations

import asyncio
import contextlib
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
    async with _counter_database(db_flavour, tmp_path) as db:
        yield db


@pytest.fixture
async def postgresql(tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    """The same on the local PostgreSQL, whatever ``--db`` says: for what only a database
    server does (end a connection under its client)."""
    async with _counter_database("postgresql", tmp_path) as db:
        yield db


@contextlib.asynccontextmanager
async def _counter_database(flavour: str, tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    name = None
    if flavour == "sqlite":
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


def _add_then_fail_after(conn: Connection) -> None:
    conn.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
    raise RuntimeError("the work failed after its statement")


async def test_autocommit_commits_each_statement_on_postgresql_only(
    database: SQLAlchemyManager,
) -> None:
    """With ``autocommit`` a PostgreSQL statement commits by itself (the work failing after it
    keeps it); elsewhere the work is a transaction like any other."""
    with pytest.raises(RuntimeError, match="after its statement"):
        await database.run_transaction(_add_then_fail_after, autocommit=True)
    assert await _count(database) == (1 if database.autocommits else 0)
    assert await database.run_transaction(_add, autocommit=True) == await _count(database)


def _backend(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


async def _terminate(database: SQLAlchemyManager, pid: int) -> None:
    async with database.probe_engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    for _ in range(50):  # until the pooled connection has heard of it (its socket closed)
        await asyncio.sleep(0.01)


async def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout(
    postgresql: SQLAlchemyManager,
) -> None:
    """Checkouts skip the pre-ping, yet one whose connection the server ended (a restart, a
    terminated backend) gets a fresh one: the work runs once, on a new backend."""
    database = postgresql
    first = await database.run_transaction(_backend)
    await _terminate(database, first)
    runs: list[Connection] = []

    def work(conn: Connection) -> int:
        runs.append(conn)  # before any statement: a dead connection would fail the first
        assert _backend(conn) != first
        return _add(conn)

    assert await database.run_transaction(work) == 1
    assert len(runs) == 1


async def test_a_connection_lost_before_the_commit_runs_the_work_again(
    postgresql: SQLAlchemyManager,
) -> None:
    """The connection dies under the work, before its commit: nothing was committed, and the
    work runs once more on a fresh connection."""
    database = postgresql
    runs: list[int] = []

    def work(conn: Connection) -> int:
        runs.append(_add(conn))
        if len(runs) == 1:  # the backend ends itself, with the transaction undone
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return runs[-1]

    assert await database.run_transaction(work) == 1
    assert runs == [1, 1]  # the first attempt's update was rolled back
    assert await _count(database) == 1
