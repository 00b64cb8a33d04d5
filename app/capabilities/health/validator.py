"""DependencyValidator: checks everything Renum depends on and says what is wrong and how to fix it.

It runs every check of the health registry (packages, database, migrations, Redis, model
providers, and whatever later features register) concurrently, each bounded by its own
timeout, and gathers a ``ValidationReport``: overall status (pass / warn / fail) and one entry
per dependency with its observed value, latency, message, fix and documentation link. The same
validation runs at start-up, in the background monitor and in ``renum doctor``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import State

from app import __version__
from app.capabilities.health.checks import CheckContext, InstalledMetadata, MetadataLookup
from app.capabilities.health.registry import (
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    check_classes,
)
from app.capabilities.health.schemas import HealthCheckResult, HealthReport
from app.core.config import HealthSettings, Settings
from app.db.database import SQLAlchemyManager

API_VERSION = "1"
SERVICE_ID = "renum"
# IETF componentType for each check kind; anything else is a "component".
COMPONENT_TYPES = {"database": "datastore", "schema": "datastore", "cache": "datastore"}
COMPONENT_TYPES |= {"provider": "system"}


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class DependencyEntry:
    """One dependency's result: which check, which component, what was seen, what to do."""

    check: str
    component_id: str
    kind: str
    critical: bool
    measurement: str
    status: Status
    message: str
    time: datetime
    observed_value: float | str | None = None
    observed_unit: str | None = None
    latency_ms: float | None = None
    fix: str | None = None
    docs_link: str | None = None
    affected_endpoints: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.check}:{self.measurement}"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for ``renum doctor --json`` and logs."""
        return {
            "check": self.check,
            "component": self.component_id,
            "kind": self.kind,
            "critical": self.critical,
            "status": self.status.value,
            "observed_value": self.observed_value,
            "observed_unit": self.observed_unit,
            "latency_ms": self.latency_ms,
            "message": self.message,
            "fix": self.fix,
            "docs": self.docs_link,
            "affected_endpoints": self.affected_endpoints,
            "time": iso(self.time),
        }

    def health_json(self) -> HealthCheckResult:
        """The entry in ``application/health+json``: fixes and affected endpoints only while
        it is not passing."""
        failing = self.status is not Status.passed
        return HealthCheckResult(
            componentId=self.component_id,
            componentType=COMPONENT_TYPES.get(self.kind, "component"),
            kind=self.kind,
            critical=self.critical,
            status=self.status.value,
            time=self.time,
            output=self.message,
            observedValue=self.observed_value,
            observedUnit=self.observed_unit,
            fix=self.fix if failing else None,
            affectedEndpoints=(self.affected_endpoints or None) if failing else None,
            links={"about": self.docs_link} if self.docs_link else None,
        )


def aggregate(entries: Iterable[DependencyEntry]) -> Status:
    """Overall status: ``fail`` when a critical dependency fails; ``warn`` when anything warns
    or an optional dependency fails; ``pass`` otherwise."""
    status = Status.passed
    for entry in entries:
        if entry.status is Status.fail and entry.critical:
            return Status.fail
        if entry.status is not Status.passed:
            status = Status.warn
    return status


@dataclass(frozen=True)
class ValidationReport:
    """The result of one validation (or the monitor's latest snapshot)."""

    entries: list[DependencyEntry]
    time: datetime = field(default_factory=now_utc)
    release: str = __version__

    @property
    def status(self) -> Status:
        return aggregate(self.entries)

    @property
    def ready(self) -> bool:
        """Every critical dependency passes (warnings do not stop traffic)."""
        return not any(e.critical and e.status is Status.fail for e in self.entries)

    def problems(self) -> list[DependencyEntry]:
        return [entry for entry in self.entries if entry.status is not Status.passed]

    def critical_failures(self) -> list[DependencyEntry]:
        return [e for e in self.entries if e.critical and e.status is Status.fail]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "release": self.release,
            "time": iso(self.time),
            "entries": [entry.as_dict() for entry in self.entries],
        }

    def health_json(self, details: bool) -> dict[str, Any]:
        """The IETF health-check response: the status only, or everything with ``details``."""
        if not details:
            return {"status": self.status.value}
        checks: dict[str, list[HealthCheckResult]] = {}
        for entry in self.entries:
            checks.setdefault(entry.key, []).append(entry.health_json())
        problems = self.problems()
        report = HealthReport(
            status=self.status.value,
            version=API_VERSION,
            releaseId=self.release,
            serviceId=SERVICE_ID,
            description="Renum API and its dependencies",
            time=self.time,
            output="; ".join(f"{e.key} {e.component_id}: {e.message}" for e in problems) or None,
            checks=checks,
        )
        return report.model_dump(mode="json", exclude_none=True)

    def log_fields(self) -> dict[str, Any]:
        """Fields of the one structured start-up event: the status, counts, and every entry
        that is not passing (messages and fixes never contain secrets)."""
        return {
            "status": self.status.value,
            "checked": len(self.entries),
            "passing": len(self.entries) - len(self.problems()),
            "problems": [
                {
                    "check": e.check,
                    "component": e.component_id,
                    "critical": e.critical,
                    "status": e.status.value,
                    "message": e.message,
                    "fix": e.fix,
                }
                for e in self.problems()
            ],
        }

    def summary(self) -> str:
        """A readable account of the failing critical dependencies and their fixes."""
        lines = []
        for entry in self.critical_failures():
            lines.append(f"  - {entry.check} ({entry.component_id}): {entry.message}")
            if entry.fix:
                lines.append(f"    fix: {entry.fix}")
            if entry.docs_link:
                lines.append(f"    docs: {entry.docs_link}")
        return "\n".join(lines)


def tuned(spec: CheckSpec, settings: HealthSettings) -> CheckSpec:
    """The spec with the settings' overrides applied: per-check values beat global ones. The
    TTL is kept at least one interval plus one timeout, or every result would expire before
    the next run could replace it."""
    changes: dict[str, Any] = {}
    for source in (settings, settings.checks.get(spec.name)):
        if source is None:
            continue
        for name in ("interval_seconds", "timeout_seconds", "ttl_seconds", "failure_threshold"):
            value = getattr(source, name)
            if value is not None:
                changes[name] = value
    if not changes:
        return spec
    result = replace(spec, **changes)
    shortest_ttl = result.interval_seconds + result.timeout_seconds
    return replace(result, ttl_seconds=max(result.ttl_seconds, shortest_ttl))


class DependencyValidator:
    """Runs the registered checks (or the ones given) with their tuned timeouts."""

    def __init__(
        self,
        settings: Settings,
        database: SQLAlchemyManager,
        *,
        metadata: MetadataLookup | None = None,
        checks: Sequence[HealthCheck] | None = None,
        state: State | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.state = state
        self.metadata = metadata or InstalledMetadata()
        self.checks = list(checks) if checks is not None else [cls() for cls in check_classes()]
        self.specs = {c.spec.name: tuned(c.spec, settings.health) for c in self.checks}

    async def run_check(self, check: HealthCheck) -> list[DependencyEntry]:
        """Run one check within its timeout; never raises."""
        spec = self.specs[check.spec.name]
        context = CheckContext(
            settings=self.settings,
            database=self.database,
            metadata=self.metadata,
            timeout_seconds=spec.timeout_seconds,
            state=self.state,
        )
        start = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout_seconds):
                outcomes = await check.run(context)
        except TimeoutError:
            outcomes = [self._failure(spec, f"no answer within {spec.timeout_seconds:g}s")]
        except Exception as exc:  # a broken check is reported, never allowed to stop others
            # The type only: a driver's message may carry a connection string or a secret.
            outcomes = [self._failure(spec, f"the check raised {type(exc).__name__}")]
        latency = round((time.perf_counter() - start) * 1000, 2)
        moment = now_utc()
        return [make_entry(spec, outcome, latency, moment) for outcome in outcomes]

    async def validate(self) -> ValidationReport:
        """Every check at once; the report lists entries in registry order."""
        results = await asyncio.gather(*(self.run_check(check) for check in self.checks))
        return ValidationReport([entry for entries in results for entry in entries])

    @staticmethod
    def _failure(spec: CheckSpec, message: str) -> CheckOutcome:
        fix = spec.troubleshooting.fix if spec.troubleshooting else None
        return CheckOutcome(component_id=spec.name, status=Status.fail, message=message, fix=fix)


def make_entry(
    spec: CheckSpec, outcome: CheckOutcome, latency: float | None, moment: datetime
) -> DependencyEntry:
    """A report entry from a check's outcome and its (tuned) spec."""
    affected = outcome.affected_endpoints
    return DependencyEntry(
        check=spec.name,
        component_id=outcome.component_id,
        kind=spec.kind,
        critical=spec.critical if outcome.critical is None else outcome.critical,
        measurement=spec.measurement,
        status=outcome.status,
        message=outcome.message,
        time=moment,
        observed_value=outcome.observed_value,
        observed_unit=outcome.observed_unit,
        latency_ms=latency,
        fix=outcome.fix,
        docs_link=spec.troubleshooting.docs_link if spec.troubleshooting else None,
        affected_endpoints=list(spec.affected_endpoints if affected is None else affected),
    )
