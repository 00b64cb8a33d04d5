"""SQLite's writers of this process take the write lock in turn, first come first served.

SQLite lets one transaction write at a time. A writer that finds the lock taken waits in
SQLite's busy handler, which sleeps and tries again (up to 100 ms between tries) instead of
queueing: in a burst, a waiter can keep losing the lock to newcomers until its busy timeout
runs out ("database is locked", answered 503), while later arrivals get through.

So the application's writers queue here first: ``WriterTurns`` is a fair asyncio lock (waiters
are served in arrival order) that a write transaction holds from its ``BEGIN IMMEDIATE`` to its
``COMMIT`` or ``ROLLBACK``. SQLite's busy handler is then left to arbitrate between processes
only (and for a few milliseconds between a turn ended and its commit finishing). Read-only
transactions (``BEGIN DEFERRED``) never take a turn: under WAL they do not wait for writers.

A writer waits for its turn at most the busy timeout, then fails as SQLite would have
("database is locked": a transient error, answered 503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.util import await_only

# Where a connection keeps the turn it holds (its pool entry's ``info``).
TURN = "renum_writer_turn"


class WriterTurns:
    """The write turns of one SQLite database in this process (one lock per event loop)."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self.waiting = 0  # writers of this process waiting for their turn now
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def acquire(self) -> asyncio.Lock:
        """Wait for this writer's turn (at most the timeout); the lock to release after."""
        lock = self._lock()
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await lock.acquire()
        except TimeoutError:
            locked = sqlite3.OperationalError("database is locked")
            raise OperationalError("BEGIN IMMEDIATE", None, locked) from None
        finally:
            self.waiting -= 1
        return lock

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold a turn for the block (work that writes off the application's engine)."""
        lock = await self.acquire()
        try:
            yield
        finally:
            lock.release()

    def take(self, info: dict[str, Any]) -> None:
        """Wait for a turn from SQLAlchemy's synchronous side (a connection's ``begin``, run in
        the greenlet of its asyncio bridge) and keep it in the connection's ``info``."""
        info[TURN] = await_only(self.acquire())

    @staticmethod
    def give_back(info: dict[str, Any]) -> None:
        """End the turn a connection holds, if any (its transaction ended, or it went back to
        the pool or was invalidated with one still open)."""
        lock: asyncio.Lock | None = info.pop(TURN, None)
        if lock is not None:
            lock.release()
