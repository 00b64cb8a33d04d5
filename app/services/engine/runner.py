"""Dispatch: one interface for handing executions to whatever runs them. This module is the
in-process runner (asyncio tasks under a concurrency limit) and its reaper, which resumes
executions whose owner stopped beating. Distributed workers can implement the same
interface later.

Stopping (on shutdown, as soon as it begins) cancels the running drives (a step's model call
in flight is made again by whoever resumes) and releases their executions: no owner, no
heartbeat, so another process's reaper resumes them at once instead of after
``stale_after_seconds``. The release goes through ``SQLAlchemyManager.run_transaction``, after
any engine transaction already queued there. Executions submitted after that stay pending for
another process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from app.core.config import ExecutionSettings
from app.core.logging import get_logger
from app.db import queries
from app.db.base import utcnow
from app.db.database import SQLAlchemyManager
from app.repositories.executions import EngineRepository, ExecutionRepository
from app.services.engine.engine import CommitLanded, ExecutionEngine, stale_before

log = get_logger("app.runner")


class ExecutionDispatcher(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def submit(self, execution_id: uuid.UUID) -> None: ...
    def interrupt(self, execution_id: uuid.UUID) -> None: ...


@dataclass
class _Running:
    task: asyncio.Task[None]
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)


class InProcessRunner:
    def __init__(
        self, engine: ExecutionEngine, database: SQLAlchemyManager, settings: ExecutionSettings
    ) -> None:
        self.engine = engine
        self.db = database
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.runner_concurrency)
        self._running: dict[uuid.UUID, _Running] = {}
        self._driving = 0  # those of _running holding a slot
        self._reaper: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        """Stop driving executions; the next process resumes them without waiting. Safe to
        call again (and while a first call runs): every call waits for the one stop."""
        await asyncio.shield(self.begin_stop())

    def begin_stop(self) -> asyncio.Future[None]:
        """Start stopping now, from synchronous code (the shutdown's first moment); ``stop``
        waits for it."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        running = [r.task for r in self._running.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        owner = self.engine.owner
        try:
            released = await self.db.run_transaction(
                lambda conn: EngineRepository(conn).release_ownership(owner)
            )
        except Exception as exc:  # they are resumed once their heartbeat is stale instead
            log.warning("executions_release_failed", error_type=type(exc).__name__)
            return
        log.info("executions_released", count=released, cancelled=len(running))

    def load(self) -> tuple[int, int]:
        """Executions this process drives now, and those waiting for a free slot."""
        return self._driving, len(self._running) - self._driving

    def submit(self, execution_id: uuid.UUID) -> None:
        if self._stopping is not None or execution_id in self._running:
            return  # stopping: it stays pending for another process
        interrupt = asyncio.Event()
        task = asyncio.create_task(self._run(execution_id, interrupt))
        self._running[execution_id] = _Running(task, interrupt)

    def interrupt(self, execution_id: uuid.UUID) -> None:
        running = self._running.get(execution_id)
        if running is not None:
            running.interrupt.set()

    async def _run(self, execution_id: uuid.UUID, interrupt: asyncio.Event) -> None:
        # Submitted from a request's task: its statements are the engine's, not the request's.
        queries.detach()
        again = False
        try:
            async with self._slots:
                self._driving += 1
                try:
                    await self.engine.run(execution_id, interrupt)
                finally:
                    self._driving -= 1
        except asyncio.CancelledError:
            raise
        except CommitLanded:
            # Released: driven again from its committed state, here and now.
            log.info("execution_redriven", execution_id=str(execution_id))
            again = True
        except Exception as exc:
            # The execution stays claimed; its heartbeat stops and the reaper retries it.
            log.error(
                "execution_crashed",
                execution_id=str(execution_id),
                error_type=type(exc).__name__,
                exc_info=exc,
            )
        finally:
            self._running.pop(execution_id, None)
        if again:
            self.submit(execution_id)

    async def reap(self) -> list[uuid.UUID]:
        """Submit every execution nobody is driving; return their ids."""
        cutoff = stale_before(self.db, utcnow(), self.settings.stale_after_seconds)
        async with self.db.session() as session:
            ids = await ExecutionRepository(session).abandoned(cutoff)
            await session.rollback()
        found = [i for i in ids if i not in self._running]
        for execution_id in found:
            self.submit(execution_id)
        if found:
            log.info("executions_reaped", count=len(found))
        return found

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.reap()
            except Exception as exc:  # a failed sweep is retried on the next interval
                log.warning("reaper_failed", error_type=type(exc).__name__)
            await asyncio.sleep(self.settings.reaper_interval_seconds)
