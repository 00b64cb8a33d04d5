"""Waiting for a condition in tests: poll it until it holds, fail with what was awaited.

Tests wait for states (a request reached the fake server, a stream is live, a log line
landed), never for a fixed time; the timeout only bounds a wait that would otherwise hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> None:
    """Return once ``predicate()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
