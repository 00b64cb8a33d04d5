"""Keeping the rollups (``app.models.rollup``) as executions end, and rebuilding them.

Every API process runs a ``RollupFolder``: an engine observer wakes it when an execution ends
(it folds ``delay_seconds`` later, so one fold takes every execution that ended meanwhile),
and it also looks every ``interval_seconds`` (executions a cancel or the reaper ended, calls of
teams deleted meanwhile). It folds in batches of ``batch_size`` rows, one short transaction
each (``app.repositories.rollups``), until nothing is left. Nothing waits on it: an execution's
figures count in ``GET /api/v1/usage`` from its ledger rows until they are rolled up, and from
the rollups afterwards, the same either way.

``rebuild`` recomputes every rollup from the raw rows in one transaction (``renum analytics
rebuild``): after a restore, or to check them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import RollupSettings
from app.core.logging import get_logger
from app.db.database import SQLAlchemyManager
from app.repositories import rollups

if TYPE_CHECKING:
    from app.services.engine.state import Changes

log = get_logger("app.rollups")


@dataclass(frozen=True)
class Folded:
    """What folds rolled up: how many executions and calls, and whose."""

    executions: int = 0
    calls: int = 0
    accounts: frozenset[uuid.UUID] = frozenset()

    def __add__(self, other: Folded) -> Folded:
        return Folded(
            self.executions + other.executions,
            self.calls + other.calls,
            self.accounts | other.accounts,
        )


async def fold_batch(conn: AsyncConnection, limit: int) -> Folded:
    """One batch of each kind, in the caller's transaction."""
    executions = await rollups.fold_executions(conn, limit)
    calls = await rollups.fold_calls(conn, limit)
    return Folded(len(executions), len(calls), frozenset(executions) | frozenset(calls))


async def fold_all(
    engine: AsyncEngine, limit: int, committed: Callable[[Folded], None] | None = None
) -> Folded:
    """Fold batches, each in its own transaction, until one finds less than ``limit`` of
    each kind; ``committed`` is told of each batch once it is committed."""
    total = Folded()
    while True:
        async with engine.begin() as conn:
            folded = await fold_batch(conn, limit)
        if committed is not None and folded.accounts:
            committed(folded)
        total += folded
        if folded.executions < limit and folded.calls < limit:
            return total
        await asyncio.sleep(0)  # let requests in between batches


async def rebuild(engine: AsyncEngine, limit: int) -> Folded:
    """Recompute every rollup from the raw rows (the ledger's rows and daily totals, the
    executions), in one transaction: readers see the old rollups until it commits."""
    total = Folded()
    async with engine.begin() as conn:
        await rollups.clear(conn)
        while True:
            folded = await fold_batch(conn, limit)
            total += folded
            if folded.executions < limit and folded.calls < limit:
                return total


@dataclass
class RollupFolder:
    database: SQLAlchemyManager
    settings: RollupSettings
    # Told of each committed batch (the cache of analytics figures forgets those accounts').
    observers: list[Callable[[Folded], None]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _failing: bool = field(default=False, init=False)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever())

    def kick(self) -> None:
        """Fold now rather than at the next interval."""
        self._wake.set()

    def on_engine_commit(self, changes: Changes) -> None:
        """An engine observer: an execution that ended is folded at once."""
        if changes.finish is not None:
            self.kick()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _committed(self, folded: Folded) -> None:
        for observer in self.observers:
            try:
                observer(folded)
            except Exception as exc:
                log.warning("rollups_observer_failed", error_type=type(exc).__name__)

    async def _run_forever(self) -> None:
        while True:
            if self._wake.is_set():  # an execution ended: let the ones ending with it land too
                await asyncio.sleep(self.settings.delay_seconds)
            self._wake.clear()
            try:
                folded = await fold_all(
                    self.database.engine, self.settings.batch_size, self._committed
                )
            except Exception as exc:  # the database is away: folded on the next round
                if not self._failing:
                    log.warning("rollups_fold_failed", error_type=type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info("rollups_fold_recovered")
                self._failing = False
                if folded.executions or folded.calls:
                    log.debug("rollups_folded", executions=folded.executions, calls=folded.calls)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval_seconds):
                    await self._wake.wait()
