"""Live delivery of execution events inside one process.

Events are stored in the database (the source of truth); the hub only wakes up readers in
this process when new ones are committed, so streams need not poll fast. Readers still
re-check the database on a timeout, which covers events committed by other processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict


class EventHub:
    def __init__(self) -> None:
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)

    def notify(self, execution_id: uuid.UUID) -> None:
        for waiter in self._waiters.get(execution_id, ()):
            waiter.set()

    async def wait(self, execution_id: uuid.UUID, seconds: float) -> bool:
        """Wait until new events of ``execution_id`` are committed, or ``seconds`` pass."""
        waiter = asyncio.Event()
        self._waiters[execution_id].add(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[execution_id]
