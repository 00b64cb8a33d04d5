"""Live delivery of execution events inside one process.

Events are stored in the database (the source of truth); the hub only wakes up readers in
this process when new ones are committed, so streams need not poll fast. A reader registers
before it reads, so a commit between its read and its wait is never missed; readers still
re-check the database on a timeout, which covers events committed by other processes.

When the process shuts down the hub is closed: every reader wakes up, and streams end with
``StreamsClosed`` (their clients resume from another process with ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class StreamsClosed(Exception):
    """The process is shutting down: live streams end here and resume elsewhere."""


class EventHub:
    def __init__(self) -> None:
        self._listeners: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every stream: wake all readers, which see ``closed`` and stop."""
        self._closed = True
        for signals in list(self._listeners.values()):
            for signal in signals:
                signal.set()

    def notify(self, execution_id: uuid.UUID) -> None:
        for signal in self._listeners.get(execution_id, ()):
            signal.set()

    @contextmanager
    def listening(self, execution_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever ``execution_id`` commits news; clear it before each read."""
        signal = asyncio.Event()
        if self._closed:
            signal.set()
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
