"""The connection pool of the application's engine, measured, and the guard of every checkout.

``MeasuredPool`` is SQLAlchemy's asyncio queue pool with four additions, all O(1) per checkout:

- its figures (``PoolStats``): checkouts that had to wait for a connection and the time they
  waited, connections that could not be opened or were lost, beside the pool's own size,
  checked-out and overflow counts (``pool_status``);
- a ``gate`` asked before each checkout and before opening each connection (the database
  manager's circuit breaker: while the database is away, a checkout, or the replacement of a
  connection that was lost, is refused at once instead of waiting for a timeout) and told of
  each checkout's outcome;
- the connections checked out right now, so that when an outage is detected they can be
  terminated, which ends the statements hung on them at once (``terminate_in_use``);
- checkouts made under ``unpinged()`` skip the pre-ping (one to three round trips): for work
  that survives a connection lost under it anyway (the execution engine's transactions, tried
  again after a connection failure and fenced by the lease). Such a checkout still replaces a
  connection its driver already knows to be closed (the server ended it: a restart, a
  terminated backend), at no cost; a connection found dead by the work itself is invalidated
  by SQLAlchemy (with every connection opened before it), so the next checkout gets a fresh
  one.

A failure to open a connection (refused, timed out, reset: the driver raises ``OSError`` or
``TimeoutError``, which SQLAlchemy passes through unwrapped) is raised as ``ConnectionFailed``,
so that the layers above tell a database outage from any other error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool


class ConnectionFailed(ConnectionError):
    """The database could not be reached: a connection could not be opened, or was lost."""


class CheckoutGate(Protocol):
    """What the pool asks before a checkout and tells after it (the circuit breaker)."""

    def check(self) -> None:
        """Raise to refuse the checkout."""

    def succeeded(self) -> None: ...

    def failed(self) -> None: ...


@dataclass
class PoolStats:
    """Counters of one engine's pool, kept across the pool's re-creation (``dispose``)."""

    waits: int = 0
    wait_seconds: float = 0.0
    connection_errors: int = 0
    gate: CheckoutGate | None = None
    in_use: set[ConnectionPoolEntry] = field(default_factory=set)


# The driver errors (by class, or a base class, as asyncpg names them) that mean the server
# went away or cannot take the connection, rather than refusing a statement: SQLSTATE class 08
# (PostgresConnectionError and its subclasses), a connection closed under an operation, the
# server shutting down or starting (57P01-57P03), no connection slot left (53300), and, with
# a multi-host URL (``target_session_attrs=read-write``), every host answering but none taking
# writes (a failover between the old primary's demotion and the replica's promotion).
DRIVER_CONNECTION_ERRORS = frozenset(
    {
        "PostgresConnectionError",
        "TargetServerAttributeNotMatched",
        "ConnectionDoesNotExistError",
        "AdminShutdownError",
        "CrashShutdownError",
        "CannotConnectNowError",
        "TooManyConnectionsError",
    }
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error it wraps, and their causes, first to last."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or the connection was lost (as
    opposed to a statement the database refused)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    for cause in _causes(exc):
        if isinstance(cause, OSError | TimeoutError):
            return True
        if any(kind.__name__ in DRIVER_CONNECTION_ERRORS for kind in type(cause).__mro__):
            return True
    return False


# SQLSTATEs that say "try the same transaction again": a serialization failure and a deadlock
# (PostgreSQL rolled the transaction back; it can succeed as it is the next time).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Whether running the same idempotent work again may succeed: a lost or refused
    connection, a serialization failure, a deadlock, or SQLite's write lock still held by
    another writer after the busy timeout."""
    if is_connection_failure(exc):
        return True
    for cause in _causes(exc):
        if getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        if type(cause).__name__ == "OperationalError" and "database is locked" in str(cause):
            return True
    return False


# True while the checkouts of this context skip the pre-ping (``unpinged``).
_unpinged: ContextVar[bool] = ContextVar("renum_unpinged_checkout", default=False)


@contextmanager
def unpinged() -> Iterator[None]:
    """Checkouts made inside the block (in this task, and the greenlets SQLAlchemy runs its
    statements in) skip the pool's pre-ping."""
    token = _unpinged.set(True)
    try:
        yield
    finally:
        _unpinged.reset(token)


class MeasuredPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` with the figures, gate, tracking and pre-ping switch described
    above."""

    stats: PoolStats
    _pings: bool  # pre-ping as configured (``pool_pre_ping``)
    # SQLAlchemy names a pool's logger after its class; this subclass lives under ``app``,
    # whose loggers run at INFO, so keep SQLAlchemy's own name (and its WARNING level).
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def __init__(self, *args: Any, stats: PoolStats | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = stats or PoolStats()
        self._open = self._invoke_creator
        # Every new connection goes through here: the first ones, overflow, and the
        # replacements pre-ping and recycling open.
        self._invoke_creator = self._open_connection  # type: ignore[assignment]  # same call, Any result
        if kwargs.get("_dispatch") is None:  # ``recreate`` passes on the listeners
            event.listen(self, "checkout", _closed_by_server)

    # SQLAlchemy reads ``_pre_ping`` on each checkout (and sets it once, when the pool is built).
    @property
    def _pre_ping(self) -> bool:
        return self._pings and not _unpinged.get()

    @_pre_ping.setter
    def _pre_ping(self, value: bool) -> None:
        self._pings = value

    def _open_connection(self, record: ConnectionPoolEntry) -> Any:
        if self.stats.gate is not None:
            # Open: no new connection either, such as the one replacing a connection the
            # breaker terminated (a pre-ping's replacement would wait the connect timeout).
            self.stats.gate.check()
        try:
            return self._open(record)
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            self.stats.connection_errors += 1
            if self.stats.gate is not None:
                self.stats.gate.failed()
            raise ConnectionFailed(
                f"cannot connect to the database ({type(exc).__name__})"
            ) from exc

    def _do_get(self) -> ConnectionPoolEntry:
        stats = self.stats
        if stats.gate is not None:
            stats.gate.check()
        # A checkout waits when no connection is idle and the overflow is used up.
        waits = self._pool.empty() and -1 < self._max_overflow <= self._overflow
        started = time.perf_counter() if waits else 0.0
        try:
            record = super()._do_get()
        finally:
            if waits:
                stats.waits += 1
                stats.wait_seconds += time.perf_counter() - started
        stats.in_use.add(record)
        if stats.gate is not None:
            stats.gate.succeeded()
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self.stats.in_use.discard(record)
        super()._do_return_conn(record)

    def recreate(self) -> MeasuredPool:
        fresh = cast(MeasuredPool, super().recreate())  # QueuePool builds self.__class__
        fresh.stats = self.stats
        fresh._pings = self._pings  # as configured, whatever context recreates it
        self.stats.in_use.clear()
        return fresh

    def terminate_in_use(self) -> int:
        """Terminate every checked-out connection (no goodbye to a server that may not answer):
        whatever waits on one fails at once and the pool replaces it. Returns how many."""
        records = list(self.stats.in_use)
        for record in records:
            connection = record.dbapi_connection
            if connection is not None:
                self._dialect.do_terminate(connection)
        return len(records)


def _closed_by_server(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    """Without its pre-ping, a checkout still refuses a connection its driver knows to be
    closed (asyncpg's ``is_closed``: no round trip); SQLAlchemy then opens another."""
    if not _unpinged.get():
        return
    is_closed = getattr(getattr(dbapi_connection, "driver_connection", None), "is_closed", None)
    if is_closed is not None and is_closed():
        raise DisconnectionError("the server closed the connection")


def pool_status(pool: Pool) -> dict[str, float]:
    """The pool's figures now: size, checked out, overflow (never below 0), waits, wait time,
    connection errors. A pool other than ``MeasuredPool`` reports its own counts only."""
    status: dict[str, float] = {}
    for name, method in (("size", "size"), ("checked_out", "checkedout"), ("overflow", "overflow")):
        read = getattr(pool, method, None)
        if callable(read):
            status[name] = float(max(0, read()))
    stats = getattr(pool, "stats", None)
    if isinstance(stats, PoolStats):
        status["waits"] = float(stats.waits)
        status["wait_seconds"] = stats.wait_seconds
        status["connection_errors"] = float(stats.connection_errors)
    return status
