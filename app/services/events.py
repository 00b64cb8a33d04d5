"""Live delivery of execution events inside one process.

Events are stored in the database (the source of truth); the hub only wakes up readers in
this process when new ones are committed, so streams need not poll fast. A reader registers
before it reads, so a commit between its read and its wait is never missed; readers still
re-check the database on a timeout, which covers events committed by other processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class EventHub:
    def __init__(self) -> None:
        self._listeners: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)

    def notify(self, execution_id: uuid.UUID) -> None:
        for signal in self._listeners.get(execution_id, ()):
            signal.set()

    @contextmanager
    def listening(self, execution_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever ``execution_id`` commits news; clear it before each read."""
        signal = asyncio.Event()
        self._listeners[execution_id].add(signal)
        try:
            yield signal
        finally:
            listeners = self._listeners.get(execution_id)
            if listeners is not None:
                listeners.discard(signal)
                if not listeners:
                    del self._listeners[execution_id]


async def wait_for(signal: asyncio.Event, seconds: float) -> bool:
    """Wait until ``signal`` is set or ``seconds`` pass; return whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await signal.wait()
    except TimeoutError:
        return False
    return True
