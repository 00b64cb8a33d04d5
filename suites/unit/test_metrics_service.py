"""The metrics collector without a server: one registry per app, and a scrape that still
answers when the database does not."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.capabilities.metrics import collector as metrics
from app.capabilities.metrics.collector import ScrapedGauges
from app.core.metrics import Metrics


def gauges(environment: str = "test") -> ScrapedGauges:
    return ScrapedGauges(Metrics("0.0.0", environment))


def names(body: bytes) -> set[str]:
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}


class BrokenDatabase:
    """A database whose pool has no counter and whose sessions fail."""

    class engine:  # mimics SQLAlchemyManager.engine
        pool = object()

    @asynccontextmanager
    async def session(self) -> Any:
        raise ConnectionRefusedError("database down")
        yield


def test_two_registries_never_collide() -> None:
    first, second = gauges("test"), gauges("production")
    assert first.metrics.shared is not second.metrics.shared
    assert "renum_build_info" in names(asyncio.run(second.render(BrokenDatabase())))  # type: ignore[arg-type]


def test_a_failing_database_leaves_the_gauges_out_of_date_but_the_scrape_answers() -> None:
    body = asyncio.run(gauges().render(BrokenDatabase()))  # type: ignore[arg-type]
    found = names(body)
    assert "process_resident_memory_bytes" in found
    assert "renum_executions_active" in found  # never set: the initial 0
    assert metrics._checked_out(object()) == 0


def test_a_slow_database_is_given_up_on(monkeypatch: Any) -> None:
    monkeypatch.setattr(metrics, "QUERY_TIMEOUT_SECONDS", 0.01)

    class SlowDatabase(BrokenDatabase):
        @asynccontextmanager
        async def session(self) -> Any:
            await asyncio.sleep(1)
            yield

    assert asyncio.run(metrics._active_executions(SlowDatabase())) is None  # type: ignore[arg-type]
