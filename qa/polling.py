"""Waiting for a condition in tests: poll it until it holds, fail with what was awaited.

Tests wait for states (a request reached the fake server, a stream is live, a log line
landed), never for a fixed time; the timeout only bounds a wait that would otherwise hang.

``wait_until`` polls from a thread; ``wait_until_async`` from a coroutine, yielding to the
event loop between polls (for state that the loop's own tasks move on). Both return the
predicate's first truthy value, so a poll can hand back what it read::

    execution = wait_until(lambda: ended(get_execution(...)), what="the execution's end")

where ``ended`` returns the execution once it is terminal and ``None`` before. A timeout
fails with ``what`` and the last value the predicate returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic, sleep
from typing import TypeVar

T = TypeVar("T")


def _timed_out(timeout: float, what: str, predicate: object, last: object) -> AssertionError:
    seen = "" if last is None or isinstance(last, bool) else f"; last seen: {last!r}"
    return AssertionError(f"timed out after {timeout}s waiting for {what or predicate}{seen}")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> T:
    """Return ``predicate()``'s first truthy value; AssertionError after ``timeout`` seconds.

    The deadline is checked after each poll, never instead of one: a state reached while the
    poller slept on a busy machine still counts."""
    deadline = monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if monotonic() > deadline:
            raise _timed_out(timeout, what, predicate, last)
        sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float = 10.0,  # noqa: ASYNC109 - wait_until's signature, failing with what it awaited
    what: str = "",
    interval: float = 0.01,
) -> T:
    """``wait_until`` for a coroutine: sleeps with ``asyncio.sleep`` between polls, so the
    event loop's other tasks (the ones expected to change the state) run meanwhile."""
    deadline = monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if monotonic() > deadline:
            raise _timed_out(timeout, what, predicate, last)
        await asyncio.sleep(interval)
