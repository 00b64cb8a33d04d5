"""The counters the intrusion detection shares across API processes, so that two processes
behind a load balancer enforce one limit.

A ``CounterStore`` keeps integers under string keys, each alive for a time to live: ``incr``
(adding to a counter that starts at zero with a new expiry once the old one passed),
``get_many``, ``put`` and ``delete``. Three stores: ``RedisCounters`` (``redis_url``: one round
trip per call, pipelined), ``DatabaseCounters`` (the ``security_counters`` table: one upsert or
select per call, on SQLite and PostgreSQL) and ``MemoryCounters`` (one process only: unit tests,
and an in-process app without a database to share).

``add_member`` counts the distinct members of a set in a fixed window with two counters (the
member's own, whose first increment adds one to the set's), so every store counts distinct
emails or sources alike."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Table, case, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.db.database import READ_ONLY, SQLAlchemyManager
from app.models import SecurityCounter

REDIS_PREFIX = "renum:security:"
TABLE: Table = SecurityCounter.__table__  # type: ignore[assignment]  # a Table, as declared


class CounterStore(Protocol):
    name: str

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to the counter (a new one, or one whose time ran out, starts at zero
        and lives ``ttl`` seconds); its new value."""

    async def get_many(self, keys: Sequence[str]) -> list[int | None]:
        """Each key's value, None for one absent or expired."""

    async def put(self, key: str, value: int, ttl: float) -> None:
        """Set the counter to ``value`` for ``ttl`` seconds."""

    async def delete(self, key: str) -> None: ...

    async def purge(self) -> int:
        """Remove expired counters (the stores that do not expire them themselves)."""

    async def close(self) -> None: ...


def window_key(key: str, window_seconds: int, now: float | None = None) -> str:
    """``key`` in the current fixed window of ``window_seconds`` (windows aligned on the
    epoch, so every process names the same one)."""
    moment = time.time() if now is None else now
    return f"{key}@{int(moment // window_seconds)}"


def digest(value: str) -> str:
    """A short fixed-length stand-in for a member (an email, an address) in a key."""
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


async def add_member(store: CounterStore, key: str, member: str, window_seconds: int) -> int:
    """Add ``member`` to the set ``key`` of the current window; the set's distinct members."""
    name = window_key(key, window_seconds)
    if await store.incr(f"{name}|{digest(member)}", 1, window_seconds) == 1:
        return await store.incr(name, 1, window_seconds)
    return (await store.get_many([name]))[0] or 0


class MemoryCounters:
    """Counters in this process only."""

    name = "memory"

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, float]] = {}

    def _live(self, key: str, now: float) -> int | None:
        found = self.values.get(key)
        if found is None or found[1] <= now:
            return None
        return found[0]

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        now = time.time()
        current = self._live(key, now)
        expires = self.values[key][1] if current is not None else now + ttl
        value = (current or 0) + amount
        self.values[key] = (value, expires)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[int | None]:
        now = time.time()
        return [self._live(key, now) for key in keys]

    async def put(self, key: str, value: int, ttl: float) -> None:
        self.values[key] = (value, time.time() + ttl)

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def purge(self) -> int:
        now = time.time()
        expired = [key for key, (_, expires) in self.values.items() if expires <= now]
        for key in expired:
            del self.values[key]
        return len(expired)

    async def close(self) -> None:
        self.values.clear()


class RedisCounters:
    """Counters in Redis under ``renum:security:``; Redis expires them itself."""

    name = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # optional: imported when Redis is configured

        self.client: Any = redis.from_url(  # type: ignore[no-untyped-call]
            url, socket_timeout=2, socket_connect_timeout=2
        )

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        name = REDIS_PREFIX + key
        pipe = self.client.pipeline(transaction=False)
        pipe.set(name, 0, ex=max(1, math.ceil(ttl)), nx=True)
        pipe.incrby(name, amount)
        _, value = await pipe.execute()
        return int(value)

    async def get_many(self, keys: Sequence[str]) -> list[int | None]:
        if not keys:
            return []
        values = await self.client.mget([REDIS_PREFIX + key for key in keys])
        return [None if value is None else int(value) for value in values]

    async def put(self, key: str, value: int, ttl: float) -> None:
        await self.client.set(REDIS_PREFIX + key, value, ex=max(1, math.ceil(ttl)))

    async def delete(self, key: str) -> None:
        await self.client.delete(REDIS_PREFIX + key)

    async def purge(self) -> int:
        return 0  # Redis expires keys itself

    async def close(self) -> None:
        await self.client.aclose()


class DatabaseCounters:
    """Counters in the ``security_counters`` table, one short transaction per call."""

    name = "database"

    def __init__(self, database: SQLAlchemyManager) -> None:
        self.database = database
        postgresql = database.engine.dialect.name == "postgresql"
        self._insert: Any = postgresql_insert if postgresql else sqlite_insert

    def _upsert(self, key: str, value: int, expires_at: float, *, add: bool, now: float) -> Any:
        table = TABLE
        statement = self._insert(table).values(key=key, value=value, expires_at=expires_at)
        new = statement.excluded
        changes: dict[str, Any]
        if add:
            expired = table.c.expires_at <= now
            changes = {
                "value": case((expired, new.value), else_=table.c.value + new.value),
                "expires_at": case((expired, new.expires_at), else_=table.c.expires_at),
            }
        else:
            changes = {"value": new.value, "expires_at": new.expires_at}
        return statement.on_conflict_do_update(
            index_elements=[table.c.key], set_=changes
        ).returning(table.c.value)

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        now = time.time()
        statement = self._upsert(key, amount, now + ttl, add=True, now=now)
        async with self.database.session() as session:
            value = (await session.execute(statement)).scalar_one()
            await session.commit()
        return int(value)

    async def get_many(self, keys: Sequence[str]) -> list[int | None]:
        if not keys:
            return []
        table = TABLE
        query = select(table.c.key, table.c.value).where(
            table.c.key.in_(list(keys)), table.c.expires_at > time.time()
        )
        async with self.database.session() as session:
            # A read: on SQLite it begins deferred, never queueing behind the writers.
            await session.connection(execution_options=READ_ONLY)
            found = {row.key: int(row.value) for row in await session.execute(query)}
            await session.rollback()
        return [found.get(key) for key in keys]

    async def put(self, key: str, value: int, ttl: float) -> None:
        now = time.time()
        statement = self._upsert(key, value, now + ttl, add=False, now=now)
        async with self.database.session() as session:
            await session.execute(statement)
            await session.commit()

    async def delete(self, key: str) -> None:
        table = TABLE
        async with self.database.session() as session:
            await session.execute(delete(table).where(table.c.key == key))
            await session.commit()

    async def purge(self) -> int:
        table = TABLE
        async with self.database.session() as session:
            result: Any = await session.execute(
                delete(table).where(table.c.expires_at <= time.time())
            )
            await session.commit()
        return int(result.rowcount or 0)

    async def close(self) -> None:
        return None
