"""The facts that prove a PostgreSQL backup whole, read with the same shape as SQLite's
(``DatabaseFacts``: the migration revision, a checksum of the schema, each table's rows and
checksum).

``mark_restore_point(url, name)`` creates the named restore point in the live database's
write-ahead log while every table of the schema is locked against writes (``SHARE`` mode:
readers go on, writers wait a few milliseconds), and takes a read snapshot in that same
moment from a second connection; the facts are read from that snapshot after the lock is
released, so they describe the database exactly as it is at that point of the log while
writers go on. A verification restores the backup to
that restore point in a throwaway server and reads ``read_facts(url)`` there.

A table's checksum is the sum of the first 60 bits of each row's MD5 (over the row's text
form): independent of row order, computed by the server in one pass, so one changed, missing
or extra row changes it without the rows ever leaving the server.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime
from typing import Any

import asyncpg

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


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://``) as the DSN asyncpg itself takes."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


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


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=30)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise SnapshotError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from None


async def _mark(url: str, name: str) -> tuple[DatabaseFacts, datetime]:
    locker, reader = await _connect(url), await _connect(url)
    try:
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            async with locker.transaction():
                qualified = [row[0] for row in await locker.fetch(TABLES)]
                if qualified:  # every writer before has committed and is visible; later ones wait
                    await locker.execute(f"LOCK TABLE {', '.join(qualified)} IN SHARE MODE")
                await reader.fetchval("SELECT 1")  # the reader's snapshot: this very state
                await locker.execute("SELECT pg_create_restore_point($1)", name)
                moment: datetime = await locker.fetchval("SELECT clock_timestamp()")
            # The writers go on; the reader's snapshot still shows the restore point's state.
            facts = await _facts(reader)
        return facts, moment
    except asyncpg.PostgresError as exc:
        hint = ""
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            hint = (
                " (the database user needs `GRANT EXECUTE ON FUNCTION pg_create_restore_point"
                "(text) TO <user>` and to own the tables)"
            )
        raise SnapshotError(f"cannot mark the backup's restore point: {exc}{hint}") from None
    finally:
        await locker.close()
        await reader.close()


def mark_restore_point(url: str, name: str) -> tuple[DatabaseFacts, datetime]:
    """Create the restore point ``name`` in the database at ``url``; return the database's
    facts at that point and the server's time then."""
    return asyncio.run(_mark(url, name))


async def _read(url: str) -> DatabaseFacts:
    connection = await _connect(url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
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
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
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
