"""Riding through a database outage: the watcher that opens and closes the circuit breaker, and
the answers the API gives while the database is away.

The watcher probes the database every ``breaker_probe_seconds`` on a connection of its own
(``SQLAlchemyManager.ping``: never the pool, never SQLite's write lock), bounded by
``database.connect_timeout_seconds``. A probe that fails or hangs opens the breaker (connections
checked out are terminated, so nothing waits on a hung server); the first probe that succeeds
closes it. The pool opens it too, after ``breaker_failures`` connections in a row could not be
opened (``app.db.pool``).

While it is open, every request that needs the database is answered at once with 503
``application/problem+json`` and ``Retry-After``; so is one whose connection was lost under it
(its transaction never committed), one whose transaction met a serialization failure or a
deadlock (after ``retry.py`` ran a read again), and one that found the pool exhausted. Any
other database error keeps its usual answer (a 500 without details). Every operation of the API
documents the 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.capabilities.database_manager.retry import TRANSIENT
from app.core.config import Settings
from app.core.errors import (
    PROBLEM_MEDIA_TYPE,
    DatabaseUnavailable,
    ServiceUnavailable,
    problem_response,
)
from app.core.logging import get_logger
from app.core.schema_additions import add_to_schema
from app.db.breaker import CircuitBreaker
from app.db.database import SQLAlchemyManager
from app.db.pool import ConnectionFailed, is_connection_failure, is_transient

log = get_logger("app.database")

API_PREFIX = "/api/v1/"


class OutageWatch:
    """Probes the database in the background and opens or closes ``breaker`` accordingly."""

    def __init__(
        self,
        database: SQLAlchemyManager,
        breaker: CircuitBreaker,
        settings: Callable[[], Settings],
    ) -> None:
        self.database = database
        self.breaker = breaker
        self.settings = settings
        self.probes = 0
        self._task: asyncio.Task[None] | None = None

    async def probe(self) -> bool:
        """One round trip within the connect timeout; whether the database answered."""
        self.probes += 1
        try:
            async with asyncio.timeout(self.settings().database.connect_timeout_seconds):
                await self.database.ping()
        except Exception:  # refused, reset, timed out: all mean "not answering"
            return False
        return True

    async def round(self) -> None:
        """Probe once and set the breaker from the answer."""
        if await self.probe():
            self.breaker.answered()
            self.breaker.close()
        else:
            timeout = self.settings().database.connect_timeout_seconds
            self.breaker.open(f"the database did not answer a probe within {timeout:g} s")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings().database_manager.breaker_probe_seconds)
            await self.round()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="renum-database-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _retry_after(request: Request) -> int:
    settings: Settings = request.app.state.settings
    return settings.database_manager.retry_after_seconds


def _answer(request: Request, problem: ServiceUnavailable) -> JSONResponse:
    return problem_response(
        problem.status,
        problem.slug,
        problem.title,
        problem.detail,
        instance=request.url.path,
        headers=problem.headers,
    )


async def _connection_failed(request: Request, exc: Exception) -> JSONResponse:
    """A connection could not be opened or was lost mid-request, or the transaction met a
    serialization failure or a deadlock: nothing was committed. A read is marked so that
    ``RetryTransientReads`` runs it again."""
    if isinstance(exc, DBAPIError) and not is_transient(exc):
        raise exc  # a statement the database refused: the usual 500
    setattr(request.state, TRANSIENT, True)
    breaker: CircuitBreaker | None = request.app.state.database.breaker
    lost = is_connection_failure(exc)
    if breaker is not None and lost and not isinstance(exc, ConnectionFailed):
        breaker.failed()  # the pool counted connection failures already
    log.warning("database_request_refused", error_type=type(exc).__name__)
    detail = "The database is not answering; nothing was changed. Try again shortly."
    return _answer(request, DatabaseUnavailable(detail, retry_after=_retry_after(request)))


async def _pool_exhausted(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database_pool_exhausted")
    detail = "Every database connection is busy; nothing was changed. Try again shortly."
    return _answer(request, ServiceUnavailable(detail, retry_after=_retry_after(request)))


def install_answers(app: FastAPI) -> None:
    """The 503 answers above, and the 503 documented on every API operation."""
    app.add_exception_handler(ConnectionFailed, _connection_failed)
    app.add_exception_handler(DBAPIError, _connection_failed)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    add_to_schema(app, _document_unavailable)


def _document_unavailable(schema: dict[str, Any]) -> None:
    for path, item in schema.get("paths", {}).items():
        if not path.startswith(API_PREFIX):
            continue
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                # A copy each: a later step may change one operation's answers.
                operation["responses"].setdefault("503", copy.deepcopy(UNAVAILABLE_RESPONSE))


UNAVAILABLE_RESPONSE: dict[str, Any] = {
    "description": "The database is not answering, or every connection is busy; nothing was "
    "changed. Try again after `Retry-After` seconds.",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
