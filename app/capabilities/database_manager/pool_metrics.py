"""The database pool and the circuit breaker on ``/metrics``, read when scraped.

Current figures (connections checked out, overflow, whether the breaker is open) are gauges
summed over the live workers; the counts since start-up (checkouts that waited, the time they
waited, connections that failed, outages, requests refused during them) are counters, advanced
by what changed since the last scrape.
"""

from __future__ import annotations

from prometheus_client import Counter

from app.core.metrics import Metrics
from app.db.database import SQLAlchemyManager

# Counter name -> (the pool_status figure or breaker attribute it follows, documentation).
COUNTED: dict[str, tuple[str, str]] = {
    "renum_database_pool_waits": (
        "waits",
        "Checkouts that waited for a free pooled connection.",
    ),
    "renum_database_pool_wait_seconds": (
        "wait_seconds",
        "Time checkouts waited for a free pooled connection.",
    ),
    "renum_database_connection_errors": (
        "connection_errors",
        "Database connections that could not be opened.",
    ),
    "renum_database_outages": ("outages", "Times the circuit breaker opened."),
    "renum_database_refused_requests": (
        "refused",
        "Checkouts refused at once while the circuit breaker was open.",
    ),
}


class PoolMetrics:
    """Folds the pool's and the breaker's figures into the app's metrics before a scrape."""

    def __init__(self, metrics: Metrics, database: SQLAlchemyManager) -> None:
        self.database = database
        self.breaker_open = metrics.gauge(
            "renum_database_breaker_open",
            "1 while the circuit breaker refuses database work (workers with it open).",
            mode="livesum",
        )
        self.counters = {
            name: Counter(name, documentation, registry=metrics.shared)
            for name, (_, documentation) in COUNTED.items()
        }
        self._seen: dict[str, float] = dict.fromkeys(COUNTED, 0.0)
        metrics.before_collect(self.fold)

    def figures(self) -> dict[str, float]:
        """The counted figures now, by counter name."""
        status = self.database.pool_status()
        breaker = self.database.breaker
        current = {
            "outages": float(breaker.outages if breaker else 0),
            "refused": float(breaker.refused if breaker else 0),
        }
        return {
            name: status.get(source, current.get(source, 0.0))
            for name, (source, _) in COUNTED.items()
        }

    def fold(self) -> None:
        breaker = self.database.breaker
        self.breaker_open.set(1.0 if breaker is not None and breaker.is_open else 0.0)
        for name, value in self.figures().items():
            delta = value - self._seen[name]
            if delta > 0:
                self.counters[name].inc(delta)
            self._seen[name] = value
