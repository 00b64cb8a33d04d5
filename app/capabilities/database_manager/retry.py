"""Transient database errors on reads, tried again before anyone sees them.

A ``GET`` or ``HEAD`` under ``/api/v1/`` changes nothing, so running it again is safe. When its
database work fails with a transient error (a lost connection, a serialization failure, a
deadlock, SQLite's write lock held past its busy timeout), the 503 handler of ``outage.py``
marks the request (``TRANSIENT`` in its state) and ``RetryTransientReads`` drops that answer
before it is sent and runs the request again, after 50 ms, 100 ms, 200 ms, ... at most
``database_manager.transient_retries`` times; the last answer goes out as it is (a 503 with
``Retry-After``). Writes are never run again here: whether a lost commit landed is not known
to the API (the engine's own transactions are fenced by their lease and retried by the engine).
Per request the cost is one comparison of the method and the path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.logging import get_logger

log = get_logger("app.database")

TRANSIENT = "renum_transient_database_error"
READS = frozenset({"GET", "HEAD"})
PREFIX = "/api/v1/"
FIRST_DELAY_SECONDS = 0.05


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class RetryTransientReads:
    """Pure ASGI middleware; see the module's docstring."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in READS
            or not scope["path"].startswith(PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        retries = self.settings().database_manager.transient_retries
        state: dict[str, Any] = scope.setdefault("state", {})
        for attempt in range(retries + 1):
            state.pop(TRANSIENT, None)
            last = attempt == retries
            dropped = await self._answer(scope, receive if attempt == 0 else _no_body, send, last)
            if not dropped:
                return
            log.info("database_read_retried", attempt=attempt + 1)
            await asyncio.sleep(FIRST_DELAY_SECONDS * 2**attempt)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, last: bool) -> bool:
        """Run the request once; whether its answer was dropped to run it again."""
        state: dict[str, Any] = scope["state"]
        dropped = False

        async def answer(message: Message) -> None:
            nonlocal dropped
            if message["type"] == "http.response.start" and state.get(TRANSIENT):
                dropped = not last
            if not dropped:
                await send(message)

        await self.app(scope, receive, answer)
        return dropped
