"""The database manager (``SQLAlchemyManager``): the engines and sessions of one settings
object, on SQLite or PostgreSQL. Nothing else in the application creates an engine or imports a
driver.

Created by the application's lifespan (never at import time) and disposed of with it. It checks
that the URL's driver is installed (``require_driver``: one clear error with the install
command), builds the engine with the pool and driver settings of the ``database`` section (pool
size, overflow, timeout, recycle, pre-ping; PostgreSQL's statement timeout and the driver's
connect and command timeouts; SQLite's pragmas, and its writers taking the write lock in
turn, ``app.db.sqlite_writers``), measures its pool (``app.db.pool``) and lets a
circuit breaker guard every checkout (``attach_breaker``). Besides sessions, it runs short
synchronous transactions in one hop (``run_transaction``: on a connection checked out without
the pre-ping, replaced when it turns out lost before the commit; on PostgreSQL, optionally as
statements committing by themselves), which the execution engine uses for its per-step
writes, and health round trips (``server_version``, ``ping``, ``on_probe_connection``) on
connections of their own that never wait for SQLite's write lock or the pool, and never hold
a caller past its timeout.

Every engine hides SQL parameters (``hide_parameters=True``): a failed statement's error, and
the statement log of ``echo``, never carry the values bound to it (prompts, key hashes, ...).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.util import asbool, greenlet_spawn

from app.core.config import DatabaseSettings
from app.core.logging import get_logger
from app.db.breaker import CircuitBreaker
from app.db.pool import (
    MeasuredPool,
    PoolStats,
    is_connection_failure,
    pool_status,
    unpinged,
)
from app.db.queries import QueryHooks, instrument, uninstrument
from app.db.sqlite_writers import WriterTurns

T = TypeVar("T")
log = get_logger("app.database")

# Execution option naming how an SQLite transaction begins: "IMMEDIATE" (the default: take the
# write lock at once) or "DEFERRED" (a read-only transaction: no write lock, never waits for a
# writer under WAL). Ignored on PostgreSQL.
SQLITE_BEGIN = "renum_sqlite_begin"
READ_ONLY: dict[str, Any] = {SQLITE_BEGIN: "DEFERRED"}
_BEGIN_MODES = frozenset({"IMMEDIATE", "DEFERRED"})


# The driver each URL scheme needs, and how to install it.
DRIVERS = {
    "sqlite+aiosqlite": ("aiosqlite", "python -m pip install 'aiosqlite>=0.20,<1'"),
    "postgresql+asyncpg": ("asyncpg", "python -m pip install 'asyncpg>=0.29,<1'"),
}


class MissingDriver(RuntimeError):
    """The database URL names a driver that is not installed: the backend does not start."""


def missing_driver(settings: DatabaseSettings) -> str | None:
    """Why the URL's driver cannot be used (with the command that installs it), or None."""
    scheme = settings.url.split("://", 1)[0]
    module, install = DRIVERS[scheme]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return (
            f"RENUM_DATABASE__URL uses {scheme}://, but its driver `{module}` cannot be "
            f"imported ({exc}). Install it: {install}"
        )
    return None


def require_driver(settings: DatabaseSettings) -> None:
    """Raise ``MissingDriver`` when the URL's driver is not installed."""
    problem = missing_driver(settings)
    if problem is not None:
        raise MissingDriver(problem)


def _sqlite_pragmas(settings: DatabaseSettings, dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_begin), not the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
    cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
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


def _sqlite_begin_in_turn(writers: WriterTurns, conn: Any) -> None:
    """``_sqlite_begin`` for the application's engine: a write transaction first waits for its
    turn among this process's writers (``app.db.sqlite_writers``), held until it ends."""
    if conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE") == "IMMEDIATE":
        writers.take(conn.info)
    try:
        _sqlite_begin(conn)
    except BaseException:
        _transaction_ended(writers, conn)
        raise


def _transaction_ended(writers: WriterTurns, conn: Connection) -> None:
    # An invalidated connection (a statement cancelled under it) has no info left to read:
    # the pool's invalidate event, which came first, gave its turn back.
    if not conn.invalidated:
        writers.give_back(conn.info)


def _connection_returned(writers: WriterTurns, _dbapi: Any, record: Any, *_: Any) -> None:
    if record is not None:  # None: a connection detached from the pool, with no turn
        writers.give_back(record.info)


def _listen_for_turns(engine: Engine, writers: WriterTurns) -> None:
    """Begin in turn; end the turn when the transaction ends, or at the latest when its
    connection goes back to the pool or is invalidated."""
    event.listen(engine, "begin", functools.partial(_sqlite_begin_in_turn, writers))
    for ended in ("commit", "rollback"):
        event.listen(engine, ended, functools.partial(_transaction_ended, writers))
    for returned in ("checkin", "invalidate"):
        event.listen(engine.pool, returned, functools.partial(_connection_returned, writers))


def writer_turns(settings: DatabaseSettings) -> WriterTurns:
    """Turns for the writers of an SQLite database, waited for at most its busy timeout."""
    return WriterTurns(settings.sqlite_busy_timeout_ms / 1000)


def _postgres_connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    """asyncpg's connect and command timeouts, and the server's statement timeout."""
    server_settings = {"application_name": "renum"}
    if settings.statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
    return {
        "timeout": settings.connect_timeout_seconds,
        "command_timeout": settings.command_timeout_seconds,
        "server_settings": server_settings,
    }


def build_engine(settings: DatabaseSettings, writers: WriterTurns | None = None) -> AsyncEngine:
    """The application's engine: a measured pool (``MeasuredPool``) with the section's
    settings; on SQLite, the pragmas, the begin mode of ``_sqlite_begin`` and the writers'
    turns (``writers``, or turns of its own)."""
    url = make_url(settings.url)
    pool: dict[str, Any] = {
        "poolclass": MeasuredPool,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout_seconds,
        "pool_recycle": settings.pool_recycle_seconds,
        "pool_pre_ping": settings.pool_pre_ping,
    }
    if settings.is_sqlite:
        engine = create_async_engine(url, echo=settings.echo, hide_parameters=True, **pool)
        if sqlite_file_path(url) is not None:
            event.listen(engine.sync_engine, "do_connect", _make_sqlite_directory)
        event.listen(engine.sync_engine, "connect", functools.partial(_sqlite_pragmas, settings))
        _listen_for_turns(engine.sync_engine, writers or writer_turns(settings))
        return engine
    return create_async_engine(
        url,
        echo=settings.echo,
        hide_parameters=True,
        connect_args=_postgres_connect_args(settings),
        **pool,
    )


def sqlite_file_path(url: URL) -> Path | None:
    """The absolute path of an SQLite URL's database file (None in memory, or when the URL
    already is an SQLite ``file:`` URI)."""
    database = url.database
    if not database or database == ":memory:" or _is_uri(url):
        return None
    return Path(database).resolve()


def _is_uri(url: URL) -> bool:
    """Whether an SQLite URL's database is a ``file:`` URI (``?uri=true``, as SQLAlchemy reads
    it: ``1``, ``yes``, ``True``, ...)."""
    return asbool(url.query.get("uri", False))


def _make_sqlite_directory(_dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
    """The application's engine creates its SQLite file's directory when it first connects
    (never when it is merely built: ``renum doctor`` builds one and must create nothing)."""
    Path(cargs[0]).parent.mkdir(parents=True, exist_ok=True)


def build_probe_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine for health round trips: no pool (each check connects afresh, so a busy
    application pool never delays it) and, on SQLite, read-only transactions that begin
    deferred (no write lock, so a burst of writers never delays it) on a file that must
    exist (opened ``mode=rw``: a health check never creates a database)."""
    url = make_url(settings.url)
    if settings.is_sqlite:
        # Looking never creates a database: the file is opened only if it exists (as a URI,
        # its path escaped: a `?`, `#` or `%` in it stays part of the name).
        path = sqlite_file_path(url)
        if path is not None:
            url = url.set(database=path.as_uri(), query={"mode": "rw", "uri": "true"})
        elif _is_uri(url) and "mode" not in url.query:
            url = url.update_query_dict({"mode": "rw"})
        engine = create_async_engine(
            url, poolclass=NullPool, hide_parameters=True, execution_options=READ_ONLY
        )
        event.listen(engine.sync_engine, "connect", _sqlite_probe_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        poolclass=NullPool,
        hide_parameters=True,
        connect_args=_postgres_connect_args(settings),
    )


def _sqlite_file(settings: DatabaseSettings) -> URL | None:
    """The pysqlite URL of the same file, when the database is an SQLite file."""
    url = make_url(settings.url)
    if not settings.is_sqlite or not url.database or url.database == ":memory:":
        return None
    return url.set(drivername="sqlite")


def build_sync_sqlite_engine(url: URL, settings: DatabaseSettings) -> Engine:
    engine = create_engine(url, echo=settings.echo, hide_parameters=True)
    event.listen(engine, "connect", functools.partial(_sqlite_pragmas, settings))
    event.listen(engine, "begin", _sqlite_begin)
    return engine


class SQLAlchemyManager:
    """Owns the engines of one ``database`` settings section and hands out sessions."""

    def __init__(self, settings: DatabaseSettings) -> None:
        require_driver(settings)
        self.settings = settings
        # SQLite: the writers' turns, shared by the engine and ``run_transaction``'s thread.
        self.writers = writer_turns(settings) if settings.is_sqlite else None
        self.engine = build_engine(settings, self.writers)
        self.breaker: CircuitBreaker | None = None
        self.query_hooks: QueryHooks | None = None
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_url = _sqlite_file(settings)
        self._sqlite: _SQLiteWorker | None = None
        self._probe: AsyncEngine | None = None
        self._round_trips: set[asyncio.Future[Any]] = set()  # probe round trips under way

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session, closed when the block ends. A connection lost under it fails the block's
        own statements; closing it afterwards does not fail again (the server rolled back
        whatever was not committed when the connection went). A caller cancelled meanwhile
        (its timeout) is let go within the driver's close timeout: SQLAlchemy terminates the
        session's connection then, whether the server answers or not."""
        session = self.sessionmaker()
        try:
            yield session
        finally:
            try:
                await session.close()
            except Exception as exc:
                if not is_connection_failure(exc):
                    raise
                await session.invalidate()

    @property
    def pool_stats(self) -> PoolStats:
        stats: PoolStats = self.engine.pool.stats  # type: ignore[attr-defined]  # MeasuredPool
        return stats

    def pool_status(self) -> dict[str, float]:
        """Size, checked out, overflow, waits, wait time and connection errors of the pool."""
        return pool_status(self.engine.pool)

    def attach_breaker(self, breaker: CircuitBreaker | None) -> None:
        """Let ``breaker`` guard every checkout (None: no guard, the base behaviour)."""
        self.breaker = breaker
        self.pool_stats.gate = breaker

    def attach_query_hooks(self, hooks: QueryHooks | None) -> None:
        """Count and time every statement of the application's engines (``app.db.queries``);
        None detaches them."""
        self.query_hooks = hooks
        engines = [self.engine.sync_engine] + ([self._sqlite.engine] if self._sqlite else [])
        for engine in engines:
            if hooks is None:
                uninstrument(engine)
            else:
                instrument(engine, hooks)

    def terminate_in_use(self) -> None:
        """Terminate the connections checked out now (a breaker's ``on_open``): statements hung
        on a server that stopped answering fail at once. PostgreSQL only: an SQLite file has no
        server to hang on, and aiosqlite leaves a statement waiting on a terminated connection
        waiting for ever."""
        pool = self.engine.pool
        if isinstance(pool, MeasuredPool) and not self.settings.is_sqlite:
            pool.terminate_in_use()

    @property
    def probe_engine(self) -> AsyncEngine:
        """The engine of health round trips (``build_probe_engine``), built when first used."""
        if self._probe is None:
            self._probe = build_probe_engine(self.settings)
        return self._probe

    async def on_probe_connection(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` on a fresh connection of the probe engine (``build_probe_engine``).

        A caller that stops waiting (its timeout cancels it) is let go at once. SQLAlchemy
        finishes closing a connection even when cancelled, and on a server that stopped
        answering midway that close (the rollback, the goodbye) would hold the caller for
        the command timeout; so on PostgreSQL the connection is terminated then (no goodbye
        to a server that may not answer), and what is left of ``work`` ends by itself; a
        round trip still connecting is cancelled, and one whose connection opens after its
        caller left is ended there."""
        opened: list[Any] = []
        abandoned = asyncio.Event()

        async def round_trip() -> T:
            async with self.probe_engine.connect() as conn:
                connection = (await conn.get_raw_connection()).dbapi_connection
                opened.append(connection)
                if abandoned.is_set():  # opened after its caller left: nothing waits for it
                    self._terminate_probe(connection)
                    raise asyncio.CancelledError
                return await work(conn)

        task = asyncio.ensure_future(round_trip())
        self._round_trips.add(task)
        task.add_done_callback(self._round_trips.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            abandoned.set()
            if opened:
                for connection in opened:
                    self._terminate_probe(connection)
            else:
                task.cancel()  # still connecting: stop there
            _finish_later(task)
            raise

    @property
    def probes_under_way(self) -> int:
        """Probe round trips started and not ended (some abandoned by their callers)."""
        return len(self._round_trips)

    def _terminate_probe(self, connection: Any) -> None:
        """End a probe connection without a goodbye (PostgreSQL; an SQLite file has no server
        to hang on, and its round trip ends within the busy timeout)."""
        if not self.settings.is_sqlite:
            self.probe_engine.dialect.do_terminate(connection)

    async def server_version(self) -> str:
        """The server's version, from a round trip on a fresh connection of its own that
        takes no write lock: the database being busy never makes it wait (only its being
        down, hung or unreachable does), and a caller's timeout is never overrun
        (``on_probe_connection``)."""
        query = "select sqlite_version()" if self.settings.is_sqlite else "show server_version"

        async def read(conn: AsyncConnection) -> str:
            return str((await conn.execute(text(query))).scalar_one())

        return await self.on_probe_connection(read)

    async def ping(self) -> None:
        """A round trip that never waits for a writer or for the pool (see server_version)."""
        await self.server_version()

    @property
    def autocommits(self) -> bool:
        """Whether ``run_transaction(autocommit=True)`` runs work outside a transaction (on
        PostgreSQL; elsewhere it is a transaction like any other)."""
        return not self.settings.is_sqlite

    async def run_transaction(
        self, work: Callable[[Connection], T], *, autocommit: bool = False
    ) -> T:
        """Run ``work`` on a synchronous connection in one transaction, committed when it
        returns (rolled back when it raises), in a single hop off the event loop.

        On an SQLite file that is a plain pysqlite connection to the same file, in a worker
        thread of its own (SQLite runs one writer at a time anyway, and through the async
        driver each statement would cost a thread hop); elsewhere the async driver runs it,
        from checkout to checkin, in one greenlet of SQLAlchemy's asyncio bridge (what
        ``run_sync`` does for its part).

        The pooled connection is not pinged first (a pre-ping costs up to three round trips
        on PostgreSQL): when it turns out to be lost before the commit was sent, nothing was
        committed and ``work`` runs once more on a fresh connection (so it may run twice; its
        effects outside the transaction must allow that). A connection lost at the commit
        itself leaves the outcome unknown: that failure is raised, for the caller to find out
        (the engine's lease fencing does).

        With ``autocommit`` (PostgreSQL only; elsewhere ignored) no transaction is begun: each
        statement of ``work`` commits by itself, which saves the BEGIN and COMMIT round trips
        of work that writes with one statement. Such work is never run twice here: its
        statement is its commit."""
        if self.breaker is not None:
            self.breaker.check()
        if self._sqlite_url is not None and self.writers is not None:
            if self._sqlite is None:
                self._sqlite = _SQLiteWorker(self._sqlite_url, self.settings)
                if self.query_hooks is not None:
                    instrument(self._sqlite.engine, self.query_hooks)
            async with self.writers.turn():
                return await self._sqlite.run(work)
        with unpinged():
            return await greenlet_spawn(self._pooled, work, autocommit and self.autocommits)

    def _pooled(self, work: Callable[[Connection], T], autocommit: bool) -> T:
        """``run_transaction`` on the application's engine, all of it (checkout, statements,
        commit, checkin) in the one greenlet of SQLAlchemy's asyncio bridge that runs this."""
        engine = self.engine.sync_engine
        if autocommit:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return work(conn)
        for attempt in (1, 2):
            with engine.connect() as conn:
                conn.begin()
                try:
                    result = work(conn)
                except Exception as exc:
                    if attempt == 2 or not is_connection_failure(exc):
                        raise
                    # Lost before the commit was sent: nothing was committed.
                    log.info("database_connection_replaced", error_type=type(exc).__name__)
                    continue
                conn.commit()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def dispose(self) -> None:
        for round_trip in list(self._round_trips):  # abandoned by their callers
            round_trip.cancel()
        if self._sqlite is not None:
            worker, self._sqlite = self._sqlite, None
            await worker.close()
        if self._probe is not None:
            probe, self._probe = self._probe, None
            await probe.dispose()
        await self.engine.dispose()


def _finish_later(task: asyncio.Future[Any]) -> None:
    """Let ``task`` end by itself, its outcome retrieved when it does."""
    task.add_done_callback(_consume_outcome)


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a round trip nobody waits for any more (asyncio would report
    an exception never retrieved)."""
    if not task.cancelled():
        task.exception()


class _SQLiteWorker:
    """One thread with one open pysqlite connection to the database file, running one
    transaction at a time (SQLite serialises writers anyway)."""

    def __init__(self, url: URL, settings: DatabaseSettings) -> None:
        self.engine = build_sync_sqlite_engine(url, settings)
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
