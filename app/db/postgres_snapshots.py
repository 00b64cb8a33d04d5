"""The facts that prove a PostgreSQL backup whole, read with the same shape as SQLite's
(``DatabaseFacts``: the migration revision, a checksum of the schema, each table's rows and
checksum), for the tables of the connection's schema (``current_schema()``).

``mark_restore_point(url, name)`` creates the named restore point in the live database's
write-ahead log while every table of the schema is locked against writes (``SHARE`` mode:
readers go on, writers wait a few milliseconds; a lock not granted within ``LOCK_TIMEOUT``,
behind a long transaction, is given up and tried again rather than left to hold every writer
back), and takes a read snapshot in that same moment from a second connection; the facts are
read from that snapshot after the lock is released, so they describe the database exactly as
it is at that point of the log while writers go on.

A table's checksum is the sum of the first 60 bits of each row's MD5 (over the row's text
form, with the session's text formats fixed: UTC, ISO dates, full float digits, hex bytea):
independent of row order, computed by the server in one pass, so one changed, missing or
extra row changes it without the rows ever leaving the server.

URLs are SQLAlchemy's (``postgresql+asyncpg://``), a multi-host one included: connections
take the arguments SQLAlchemy's asyncpg dialect would give the driver.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from app.db.snapshots import REVISION_TABLE, DatabaseFacts, SnapshotError, TableFacts

TABLES = """
SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) AS qualified, tablename
FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename
"""
COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = current_schema()
ORDER BY table_name, ordinal_position
"""
INDEXES = (
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1"
)
ROW_SUM = (
    "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)"
    " FROM {table} AS t"
)
# Rows as text look the same on any server whatever its own defaults.
TEXT_FORMATS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, MDY'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 5
# Errors that mean the server is out of reach (not a statement refused): asyncpg's client
# errors include "no host of a multi-host URL takes writes".
UNREACHABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def connect_arguments(url: str) -> dict[str, Any]:
    """What ``asyncpg.connect`` takes for the SQLAlchemy URL ``url`` (hosts, ports, user,
    password, database, ``target_session_attrs``)."""
    dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it unannotated
    _, arguments = dialect.create_connect_args(make_url(url))  # type: ignore[no-untyped-call]
    return dict(arguments)


async def _connect(url: str, patience: float = 30) -> Any:
    try:
        return await asyncpg.connect(**connect_arguments(url), timeout=patience)
    except UNREACHABLE as exc:
        raise SnapshotError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from None


async def _facts(connection: Any) -> DatabaseFacts:
    columns = [tuple(row) for row in await connection.fetch(COLUMNS)]
    indexes = [tuple(row) for row in await connection.fetch(INDEXES)]
    schema = hashlib.sha256(repr((columns, indexes)).encode()).hexdigest()
    tables = {}
    for qualified, name in await connection.fetch(TABLES):
        rows, total = await connection.fetchrow(ROW_SUM.format(table=qualified))
        tables[name] = TableFacts(rows=int(rows), checksum=f"{int(total):x}")
    revision = None
    if REVISION_TABLE in tables:
        revision = await connection.fetchval(f"SELECT version_num FROM {REVISION_TABLE}")  # noqa: S608 - a constant
    return DatabaseFacts(revision=revision, tables=tables, schema=schema)


async def _marked(locker: Any, reader: Any, name: str) -> DatabaseFacts | None:
    """One attempt: None when a lock was not granted in time or a table came or went."""
    async with reader.transaction(isolation="repeatable_read", readonly=True):
        for setting in TEXT_FORMATS:
            await reader.execute(setting)
        try:
            async with locker.transaction():
                await locker.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                qualified = [row[0] for row in await locker.fetch(TABLES)]
                if qualified:  # every writer before has committed and is visible; later wait
                    await locker.execute(f"LOCK TABLE {', '.join(qualified)} IN SHARE MODE")
                seen = [row[0] for row in await reader.fetch(TABLES)]  # the reader's snapshot
                if seen != qualified:
                    return None  # a table created or dropped meanwhile: not all were locked
                await locker.execute("SELECT pg_create_restore_point($1)", name)
        except asyncpg.LockNotAvailableError:
            return None
        # The writers go on; the reader's snapshot still shows the restore point's state.
        return await _facts(reader)


async def _mark(url: str, name: str) -> DatabaseFacts:
    locker, reader = await _connect(url), await _connect(url)
    try:
        for attempt in range(LOCK_ATTEMPTS):
            facts = await _marked(locker, reader, name)
            if facts is not None:
                return facts
            await asyncio.sleep(0.5 * (attempt + 1))
        raise SnapshotError(
            f"cannot mark the backup's restore point: the tables could not be locked for a "
            f"moment in {LOCK_ATTEMPTS} attempts (a long transaction holds them?)"
        )
    except asyncpg.PostgresError as exc:
        raise SnapshotError(f"cannot mark the backup's restore point: {exc}") from None
    finally:
        await locker.close()
        await reader.close()


def mark_restore_point(url: str, name: str) -> DatabaseFacts:
    """Create the restore point ``name`` in the database at ``url``; return the database's
    facts at that point."""
    return asyncio.run(_mark(url, name))


async def _check_marking(url: str) -> None:
    connection = await _connect(url)
    try:
        allowed = await connection.fetchval(
            "SELECT pg_is_in_recovery() = false "
            "AND has_function_privilege('pg_create_restore_point(text)', 'execute')"
        )
    except asyncpg.PostgresError as exc:
        raise SnapshotError(f"cannot check the database user's rights: {exc}") from None
    finally:
        await connection.close()
    if not allowed:
        raise SnapshotError(
            "the database user cannot mark restore points (a primary is needed, and "
            "`GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO <user>`); no backup "
            "taken"
        )


def check_marking(url: str) -> None:
    """Raise ``SnapshotError`` unless the database at ``url`` can mark restore points (run
    before a backup, so none is taken that could not be recorded)."""
    asyncio.run(_check_marking(url))


async def _read(url: str) -> DatabaseFacts:
    connection = await _connect(url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            for setting in TEXT_FORMATS:
                await connection.execute(setting)
            return await _facts(connection)
    except asyncpg.PostgresError as exc:
        raise SnapshotError(f"cannot read the database's facts: {exc}") from None
    finally:
        await connection.close()


def read_facts(url: str) -> DatabaseFacts:
    """The facts of the database at ``url`` (one consistent snapshot)."""
    return asyncio.run(_read(url))


async def _in_recovery(url: str) -> bool | None:
    try:
        connection = await _connect(url, patience=5)
    except SnapshotError:
        return None
    try:
        return bool(await connection.fetchval("SELECT pg_is_in_recovery()"))
    except asyncpg.PostgresError:
        return None
    finally:
        await connection.close()


def in_recovery(url: str) -> bool | None:
    """Whether the server at ``url`` is still recovering (None: it does not answer yet)."""
    return asyncio.run(_in_recovery(url))
