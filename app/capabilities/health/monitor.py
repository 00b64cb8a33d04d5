"""The background health monitor: runs each check on its own interval and keeps the snapshot
the probes read.

Each check runs in its own task, concurrently, bounded by its timeout (the validator enforces
it). A failing run counts only after ``failure_threshold`` consecutive failures (hysteresis: one
slow ping does not flap readiness); one passing run recovers at once. A check without a fresh
result for ``ttl_seconds`` counts as failed. Probes never wait on a dependency: they read
``snapshot()`` / ``ready``, which only look at memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace

from app.capabilities.health.registry import CheckOutcome, CheckSpec, HealthCheck, Status
from app.capabilities.health.validator import (
    DependencyEntry,
    DependencyValidator,
    ValidationReport,
    make_entry,
    now_utc,
)
from app.core.logging import get_logger
from app.core.metrics import Metrics

log = get_logger("app.health")

# What a check's latest entries say, for Prometheus (the `dependency_failing` alert rule's
# export): 1 while none fails (a warning still serves), 0 while one does.
DEPENDENCY_UP = "renum_dependency_up"


@dataclass
class CheckState:
    """What the monitor knows about one check."""

    spec: CheckSpec
    entries: list[DependencyEntry]  # what the snapshot shows
    completed_at: float  # time.monotonic() of the latest finished run
    consecutive_failures: int = 0
    # The latest entries taken as they came: below the failure threshold the snapshot shows
    # these with a note on the failed runs.
    held: list[DependencyEntry] = field(default_factory=list)

    @property
    def failing(self) -> bool:
        return _failed(self.entries)


def _failed(entries: list[DependencyEntry]) -> bool:
    return any(entry.status is Status.fail for entry in entries)


class HealthMonitor:
    """Owns the per-check background tasks and the latest snapshot."""

    def __init__(
        self,
        validator: DependencyValidator,
        initial: ValidationReport,
        metrics: Metrics | None = None,
    ) -> None:
        self.validator = validator
        self._up = (
            None
            if metrics is None
            else metrics.gauge(
                DEPENDENCY_UP,
                "Whether a dependency check passes (1) or fails (0), by check and criticality "
                "(the worst live worker's).",
                "livemin",
                ("check", "critical"),
            )
        )
        now = time.monotonic()
        self.states: dict[str, CheckState] = {}
        for check in validator.checks:
            name = check.spec.name
            entries = [entry for entry in initial.entries if entry.check == name]
            self.states[name] = CheckState(validator.specs[name], entries, now, held=entries)
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_ttl = False
        self._publish()
        if metrics is not None:  # a scrape shows a check past its TTL as failed too
            metrics.before_collect(self._publish_if_stale)

    # --- reading (the probes) -------------------------------------------------------------

    def snapshot(self) -> ValidationReport:
        """The latest report; results past their TTL are reported as failed."""
        self._publish_if_stale()
        return self._snapshot

    @property
    def ready(self) -> bool:
        """Every critical check passes (computed when a result arrives, not per probe)."""
        self._publish_if_stale()
        return self._ready

    def _publish_if_stale(self) -> None:
        if self._watch_ttl and time.monotonic() >= self._fresh_until:
            self._publish()

    # --- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start one background task per check (TTLs are watched from now on)."""
        self._watch_ttl = True
        self._publish()
        for check in self.validator.checks:
            task = asyncio.create_task(self._loop(check), name=f"health:{check.spec.name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def refresh(self, name: str) -> None:
        """Run one check now and record its result (what each background round does)."""
        check = next(c for c in self.validator.checks if c.spec.name == name)
        self.record(name, await self.validator.run_check(check))

    async def _loop(self, check: HealthCheck) -> None:
        name = check.spec.name
        while True:
            await asyncio.sleep(self.states[name].spec.interval_seconds)
            await self.refresh(name)

    def record(self, name: str, entries: list[DependencyEntry]) -> None:
        """Apply one run's result with hysteresis and publish the new snapshot."""
        state = self.states[name]
        state.completed_at = time.monotonic()
        was_failing = state.failing
        if _failed(entries):
            state.consecutive_failures += 1
            threshold = state.spec.failure_threshold
            if not was_failing and state.consecutive_failures < threshold:
                # Below the threshold: keep the last good entries, noting the failed run.
                note = (
                    f" (latest run failed, {state.consecutive_failures} of {threshold} before "
                    f"this check fails: {'; '.join(e.message for e in entries if e.message)})"
                )
                state.entries = [replace(e, message=e.message + note) for e in state.held]
                self._publish()
                return
        else:
            state.consecutive_failures = 0
        state.entries = state.held = entries
        if state.failing != was_failing:
            log.warning(
                "dependency_status_changed",
                check=name,
                status="fail" if state.failing else "pass",
                messages=[e.message for e in entries if e.status is not Status.passed],
            )
        self._publish()

    def _publish(self) -> None:
        now = time.monotonic()
        entries: list[DependencyEntry] = []
        for state in self.states.values():
            age = now - state.completed_at
            if self._watch_ttl and age > state.spec.ttl_seconds:
                entries.extend(self._stale(state, age))
            else:
                entries.extend(state.entries)
        self._fresh_until = min(
            (s.completed_at + s.spec.ttl_seconds for s in self.states.values()),
            default=float("inf"),
        )
        self._snapshot = ValidationReport(entries, time=now_utc())
        self._ready = self._snapshot.ready
        if self._up is not None:
            failing: dict[tuple[str, bool], bool] = {}
            for entry in entries:
                key = (entry.check, entry.critical)
                failing[key] = failing.get(key, False) or entry.status is Status.fail
            for (check, critical), failed in failing.items():
                self._up.labels(check, str(critical).lower()).set(0 if failed else 1)

    @staticmethod
    def _stale(state: CheckState, age: float) -> list[DependencyEntry]:
        """One failing entry for a check whose latest result is older than its TTL."""
        spec = state.spec
        outcome = CheckOutcome(
            component_id=spec.name,
            status=Status.fail,
            message=f"no fresh result for {age:.0f}s (TTL {spec.ttl_seconds:g}s): the check is "
            "not completing",
            fix="Restart the process if this persists; the check's own troubleshooting entry "
            "explains the dependency.",
        )
        return [make_entry(spec, outcome, None, now_utc())]
