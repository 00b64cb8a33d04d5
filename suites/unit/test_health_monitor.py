"""HealthMonitor: snapshot from the start-up report, hysteresis (threshold, recovery), TTL,
background loops per check, and probes that never wait on a check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from app.capabilities.health.checks import CheckContext
from app.capabilities.health.monitor import DEPENDENCY_UP, HealthMonitor
from app.capabilities.health.registry import (
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
)
from app.capabilities.health.validator import DependencyValidator
from app.core.config import Settings
from app.core.metrics import Metrics
from app.db.database import SQLAlchemyManager
from qa.polling import wait_until_async

pytestmark = pytest.mark.anyio


class Switchable(HealthCheck):
    """A check whose next result the test sets; counts its runs."""

    def __init__(self, name: str, *, critical: bool = True, threshold: int = 3) -> None:
        self.spec = CheckSpec(  # type: ignore[misc]
            name=name,
            kind="database",
            critical=critical,
            description="test",
            measurement="responseTime",
            timeout_seconds=0.5,
            interval_seconds=0.05,
            ttl_seconds=60,
            failure_threshold=threshold,
            troubleshooting=Troubleshooting("s", "c", "f", name),
        )
        self.status = Status.passed
        self.runs = 0
        self.hang = False

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        self.runs += 1
        if self.hang:
            await asyncio.sleep(30)
        return [CheckOutcome(self.spec.name, self.status, f"run {self.runs}: {self.status}")]


# Yield to the monitor's tasks until a condition holds (the timeout only guards a hang).
until = wait_until_async


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[SQLAlchemyManager]:
    db = SQLAlchemyManager(settings.database)
    yield db
    await db.dispose()


async def monitor_for(settings: Settings, database: SQLAlchemyManager, *checks: HealthCheck):
    validator = DependencyValidator(settings, database, checks=list(checks))
    return HealthMonitor(validator, await validator.validate())


async def test_snapshot_starts_from_the_start_up_report(
    settings: Settings, database: SQLAlchemyManager
):
    check = Switchable("db")
    monitor = await monitor_for(settings, database, check)
    assert check.runs == 1
    assert monitor.ready is True
    assert [e.message for e in monitor.snapshot().entries] == ["run 1: pass"]


async def test_failures_below_the_threshold_keep_the_last_good_result(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    check = Switchable("db", threshold=3)
    monitor = await monitor_for(settings, database, check)
    check.status = Status.fail
    await monitor.refresh("db")
    await monitor.refresh("db")
    assert monitor.ready is True
    [held] = monitor.snapshot().entries
    assert held.status is Status.passed
    assert held.message == (
        "run 1: pass (latest run failed, 2 of 3 before this check fails: run 3: fail)"
    )
    await monitor.refresh("db")  # the third consecutive failure
    assert monitor.ready is False
    assert monitor.snapshot().status is Status.fail
    assert monitor.snapshot().entries[0].message == "run 4: fail"
    check.status = Status.passed  # one good run recovers at once, no restart
    await monitor.refresh("db")
    assert monitor.ready is True
    assert monitor.states["db"].consecutive_failures == 0


async def test_a_pass_between_failures_resets_the_count(
    settings: Settings, database: SQLAlchemyManager
):
    check = Switchable("db", threshold=2)
    monitor = await monitor_for(settings, database, check)
    for status in (Status.fail, Status.passed, Status.fail):
        check.status = status
        await monitor.refresh("db")
    assert monitor.ready is True  # never two failures in a row


async def test_a_check_failing_from_the_start_fails_at_once(
    settings: Settings, database: SQLAlchemyManager
):
    check = Switchable("db", threshold=5)
    check.status = Status.fail
    monitor = await monitor_for(settings, database, check)
    assert monitor.ready is False
    await monitor.refresh("db")
    assert monitor.snapshot().entries[0].message == "run 2: fail"


async def test_warnings_and_optional_failures_do_not_stop_readiness(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    critical = Switchable("db")
    optional = Switchable("cache", critical=False, threshold=1)
    monitor = await monitor_for(settings, database, critical, optional)
    critical.status = Status.warn
    optional.status = Status.fail
    await monitor.refresh("db")
    await monitor.refresh("cache")
    assert monitor.ready is True
    assert monitor.snapshot().status is Status.warn


async def test_background_loops_run_each_check_on_its_interval_and_stop(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    fast = Switchable("db")
    monitor = await monitor_for(settings, database, fast)
    monitor.start()
    await until(lambda: fast.runs >= 4)  # the start-up run, then one per 0.05 s
    await monitor.stop()
    runs = fast.runs
    await asyncio.sleep(0.15)  # three intervals
    assert fast.runs == runs  # stopped


async def test_probes_answer_at_once_while_every_check_hangs(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    check = Switchable("db", threshold=1)
    monitor = await monitor_for(settings, database, check)
    check.hang = True
    monitor.start()
    await until(lambda: check.runs == 2)  # a background run is now stuck until its timeout
    for _ in range(1000):
        assert monitor.ready is True  # read from the snapshot: no probe runs or waits on a check
    assert check.runs == 2
    await until(lambda: not monitor.ready)  # the hung run timed out: that is a failure
    assert "no answer within 0.5s" in monitor.snapshot().entries[0].message
    await monitor.stop()


async def test_a_result_older_than_its_ttl_counts_as_failed(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    check = Switchable("db")
    monitor = await monitor_for(settings, database, check)
    monitor.validator.specs["db"] = monitor.states["db"].spec = replace(
        check.spec, ttl_seconds=0.1, interval_seconds=3600
    )
    monitor.start()  # TTLs are watched once the monitor runs
    assert monitor.ready is True
    await until(lambda: monitor.snapshot().entries[0].status is Status.fail, what="staleness")
    [stale] = monitor.snapshot().entries
    assert stale.status is Status.fail
    assert "no fresh result" in stale.message
    assert monitor.ready is False
    await monitor.stop()


async def test_each_check_is_up_or_down_on_the_metrics_as_its_snapshot_says(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    """`renum_dependency_up{check, critical}` follows what the snapshot shows: a warning is up,
    a failure below the threshold still up, a failure past it down, and a pass up again."""
    critical = Switchable("db", threshold=2)
    optional = Switchable("cache", critical=False, threshold=1)
    validator = DependencyValidator(settings, database, checks=[critical, optional])
    metrics = Metrics("test", "test")
    monitor = HealthMonitor(validator, await validator.validate(), metrics)

    def up() -> dict[tuple[str, str], float | None]:
        return {
            (check, flag): metrics.shared.get_sample_value(
                DEPENDENCY_UP, {"check": check, "critical": flag}
            )
            for check, flag in (("db", "true"), ("cache", "false"))
        }

    assert up() == {("db", "true"): 1.0, ("cache", "false"): 1.0}
    critical.status, optional.status = Status.warn, Status.fail
    await monitor.refresh("db")
    await monitor.refresh("cache")
    assert up() == {("db", "true"): 1.0, ("cache", "false"): 0.0}
    critical.status = Status.fail
    await monitor.refresh("db")  # one failure of two: the snapshot holds the last result
    assert up()[("db", "true")] == 1.0
    await monitor.refresh("db")
    assert up()[("db", "true")] == 0.0
    critical.status = Status.passed
    await monitor.refresh("db")
    assert up()[("db", "true")] == 1.0
