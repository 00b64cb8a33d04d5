"""The engine and session factory for one settings object; SQLite or PostgreSQL.

Created by the application's lifespan (never at import time) and closed with it. Besides
sessions, it runs short synchronous transactions in one hop (``run_transaction``), which the
execution engine uses for its per-step writes, and a health round trip (``server_version``,
``ping``) on a connection of its own that never waits for SQLite's write lock or the pool.

Every engine hides SQL parameters (``hide_parameters=True``): a failed statement's error, and
the statement log of ``echo``, never carry the values bound to it (prompts, key hashes, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.core.config import DatabaseSettings

T = TypeVar("T")

# Execution option naming how an SQLite transaction begins: "IMMEDIATE" (the default: take the
# write lock at once) or "DEFERRED" (a read-only transaction: no write lock, never waits for a
# writer under WAL). Ignored on PostgreSQL.
SQLITE_BEGIN = "renum_sqlite_begin"
READ_ONLY: dict[str, Any] = {SQLITE_BEGIN: "DEFERRED"}
_BEGIN_MODES = frozenset({"IMMEDIATE", "DEFERRED"})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_begin), not the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_probe_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # A health round trip changes nothing: no journal-mode switch, which may need a lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=2000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    """Take SQLite's write lock when a transaction starts, not at its first write: a
    transaction that read first and wrote later would otherwise fail with "database is
    locked" whenever another writer committed in between. Transactions are kept short.
    A transaction that only reads says so (``execution_options(**READ_ONLY)``) and begins
    deferred: under WAL it never waits for the writer."""
    mode = conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
    if mode not in _BEGIN_MODES:
        raise ValueError(f"{SQLITE_BEGIN} must be one of {sorted(_BEGIN_MODES)}, not {mode!r}")
    conn.exec_driver_sql(f"BEGIN {mode}")


def build_engine(settings: DatabaseSettings) -> AsyncEngine:
    url = make_url(settings.url)
    if settings.is_sqlite:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=settings.echo, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        echo=settings.echo,
        hide_parameters=True,
        pool_size=settings.pool_size,
        pool_pre_ping=True,
    )


def build_probe_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine for health round trips: no pool (each check connects afresh, so a busy
    application pool never delays it) and, on SQLite, read-only transactions that begin
    deferred (no write lock, so a burst of writers never delays it)."""
    url = make_url(settings.url)
    if settings.is_sqlite:
        engine = create_async_engine(
            url, poolclass=NullPool, hide_parameters=True, execution_options=READ_ONLY
        )
        event.listen(engine.sync_engine, "connect", _sqlite_probe_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, poolclass=NullPool, hide_parameters=True)


def _sqlite_file(settings: DatabaseSettings) -> URL | None:
    """The pysqlite URL of the same file, when the database is an SQLite file."""
    url = make_url(settings.url)
    if not settings.is_sqlite or not url.database or url.database == ":memory:":
        return None
    return url.set(drivername="sqlite")


def build_sync_sqlite_engine(url: URL, echo: bool) -> Engine:
    engine = create_engine(url, echo=echo, hide_parameters=True)
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


class Database:
    """Owns one engine and hands out sessions."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = build_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_url = _sqlite_file(settings)
        self._sqlite: _SQLiteWorker | None = None
        self._probe: AsyncEngine | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    @property
    def probe_engine(self) -> AsyncEngine:
        """The engine of health round trips (``build_probe_engine``), built when first used."""
        if self._probe is None:
            self._probe = build_probe_engine(self.settings)
        return self._probe

    async def server_version(self) -> str:
        """The server's version, from a round trip on a fresh connection of its own that
        takes no write lock: the database being busy never makes it wait (only its being
        down, hung or unreachable does)."""
        query = "select sqlite_version()" if self.settings.is_sqlite else "show server_version"
        async with self.probe_engine.connect() as conn:
            return str((await conn.execute(text(query))).scalar_one())

    async def ping(self) -> None:
        """A round trip that never waits for a writer or for the pool (see server_version)."""
        await self.server_version()

    async def run_transaction(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a synchronous connection in one transaction, committed when it
        returns (rolled back when it raises), in a single hop off the event loop.

        On an SQLite file that is a plain pysqlite connection to the same file, in a worker
        thread of its own (SQLite runs one writer at a time anyway, and through the async
        driver each statement would cost a thread hop); elsewhere the async driver runs
        ``work`` through SQLAlchemy's greenlet bridge (``run_sync``)."""
        if self._sqlite_url is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(work)
        if self._sqlite is None:
            self._sqlite = _SQLiteWorker(self._sqlite_url, self.settings.echo)
        return await self._sqlite.run(work)

    async def dispose(self) -> None:
        if self._sqlite is not None:
            worker, self._sqlite = self._sqlite, None
            await worker.close()
        if self._probe is not None:
            probe, self._probe = self._probe, None
            await probe.dispose()
        await self.engine.dispose()


class _SQLiteWorker:
    """One thread with one open pysqlite connection to the database file, running one
    transaction at a time (SQLite serialises writers anyway)."""

    def __init__(self, url: URL, echo: bool) -> None:
        self.engine = build_sync_sqlite_engine(url, echo)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="renum-sqlite")
        self.conn: Connection | None = None

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self.conn is None:
            self.conn = self.engine.connect()
        try:
            with self.conn.begin():
                return work(self.conn)
        except BaseException:
            # Whatever went wrong, the next transaction starts on a fresh connection.
            self._close()
            raise

    def _close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.thread, self._transaction, work
        )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.thread, self._close)
        await loop.run_in_executor(self.thread, self.engine.dispose)
        self.thread.shutdown(wait=True)
