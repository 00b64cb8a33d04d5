"""The circuit breaker between the application and its database.

Closed, every checkout from the pool goes ahead. After ``failures`` consecutive connections
that could not be opened, or when told the database stopped answering (``open``), it opens:
every checkout is refused at once with ``DatabaseUnavailable`` (503 with ``Retry-After``)
instead of waiting for a connect or pool timeout, and whatever hangs on a connection checked
out before is terminated (``on_open``). While it is open nothing touches the database but the
watcher's probe (``app.capabilities.database_manager``), which closes it when the database
answers again. Time is read from ``clock`` so tests can step it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from app.core.errors import DatabaseUnavailable
from app.core.logging import get_logger
from app.db.base import utcnow

log = get_logger("app.database")


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"


# Outages remembered (a run of short ones joined by gaps shorter than a grace counts as one);
# beyond, the oldest two are merged.
REMEMBERED_OUTAGES = 16


@dataclass
class Outage:
    """One outage in wall-clock time: from the database's last answer before it (as far as
    this process knows) to its first answer after it (None while it lasts)."""

    began: datetime
    ended: datetime | None = None


class CircuitBreaker:
    """Opens on consecutive connection failures or when told to; closes when told the database
    answers. Not thread-safe by design: the pool and the watcher run on the event loop."""

    def __init__(
        self,
        failures: int,
        retry_after: Callable[[], int],
        on_open: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.on_open = on_open
        self.clock = clock
        self.wall = wall
        self.state = BreakerState.closed
        self.opened_at: float | None = None
        self.outages = 0  # times it opened
        self.refused = 0  # checkouts refused while open
        self.last_outage_seconds: float | None = None
        # The last outages, newest last: no owner could renew its executions' heartbeats
        # during them (``unreachable_since``).
        self.recent: deque[Outage] = deque()
        self.first_answer: datetime | None = None  # the database's first answer to a probe
        self.last_answer: datetime | None = None  # and its last
        self._consecutive = 0

    @property
    def is_open(self) -> bool:
        return self.state is BreakerState.open

    def check(self) -> None:
        """Refuse a checkout while open."""
        if self.state is BreakerState.open:
            self.refused += 1
            raise DatabaseUnavailable(
                "The database is not answering; nothing was changed. Try again shortly.",
                retry_after=self.retry_after(),
            )

    def answered(self) -> None:
        """The database answered a probe: the latest moment it is known to have been up."""
        self.last_answer = self.wall()
        if self.first_answer is None:
            self.first_answer = self.last_answer

    def settled(self, now: datetime, grace: timedelta) -> bool:
        """Whether this process has seen the database answer for ``grace`` at least: before,
        whatever happened to it before this process started is unknown (it may have been away
        for as long as owners could not beat)."""
        return self.first_answer is not None and now - self.first_answer >= grace

    def succeeded(self) -> None:
        self._consecutive = 0

    def failed(self) -> None:
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self.open(f"{self._consecutive} connections in a row could not be opened")

    def open(self, reason: str) -> None:
        if self.state is BreakerState.open:
            return
        self.state = BreakerState.open
        self.opened_at = self.clock()
        # The database may have stopped answering any time after its last known answer
        # (noticing takes up to a probe's interval and timeout).
        if len(self.recent) == REMEMBERED_OUTAGES:
            # Full: the two oldest become one, the gap between them counted as away (the safe
            # side: the beginning of a run of outages is never forgotten).
            oldest = self.recent.popleft()
            self.recent[0].began = oldest.began
        self.recent.append(Outage(self.last_answer or self.wall()))
        self.outages += 1
        log.error("database_unavailable", reason=reason, breaker="open")
        self.on_open()

    def close(self) -> None:
        if self.state is BreakerState.closed:
            return
        self.last_outage_seconds = self.clock() - (self.opened_at or self.clock())
        self.state = BreakerState.closed
        self.opened_at = None
        if self.recent:
            self.recent[-1].ended = self.wall()
        self._consecutive = 0
        log.info(
            "database_available",
            breaker="closed",
            outage_seconds=round(self.last_outage_seconds, 3),
            refused=self.refused,
        )

    def unreachable_since(self, now: datetime, grace: timedelta) -> datetime | None:
        """When the database became unreachable, for an owner that needs ``grace`` of it
        answering to renew what it owns: the beginning of the current outage, or of the last
        one if it ended less than ``grace`` ago; outages separated by less than ``grace`` count
        as one (the earliest beginning). None when the database has answered for ``grace``."""
        outages = list(self.recent)
        if not outages:
            return None
        newest = outages[-1]
        if newest.ended is not None and now - newest.ended >= grace:
            return None
        began = newest.began
        for earlier in reversed(outages[:-1]):
            if earlier.ended is None or began - earlier.ended >= grace:
                break
            began = earlier.began
        return began
